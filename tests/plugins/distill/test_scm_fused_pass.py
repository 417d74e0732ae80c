"""sCM's fused tangent pass: one forward on dual tensors gives the student's output with its graph and its
tangent, equal (float64) to a forward with grad and a separate forward-mode AD pass, through a real Wan
network; the recipe and checkpointing rules around it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import rcm_registry as rr
from rcm_registry.jvp import jvp, jvp_with_graph


def _wan(checkpointing: str) -> nn.Module:
    torch.manual_seed(0)
    net = rr.registry().build(
        "network", "wan2.1-t2v", size="tiny", attention={"use": "math"}, activation_checkpointing=checkpointing
    )
    return net.double().train()


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 2, 4, 4, generator=g, dtype=torch.float64)
    dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([400.0], dtype=torch.float64)
    text = torch.randn(1, 5, 32, generator=g, dtype=torch.float64)
    return x, dx, t, text


def test_jvp_with_graph_equals_a_forward_and_a_separate_jvp_in_float64() -> None:
    net = _wan("none")
    x, dx, t, text = _inputs()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b, text=text)

    out = f(x, t)
    ((out - target) ** 2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    _, tangent = jvp(f, (x, t), (dx, torch.ones_like(t)))

    fused_out, fused_tangent = jvp_with_graph(f, (x, t), (dx, torch.ones_like(t)))
    assert fused_out.requires_grad and not fused_tangent.requires_grad
    ((fused_out - target) ** 2).sum().backward()
    torch.testing.assert_close(fused_out.detach(), out.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_tangent, tangent, rtol=1e-10, atol=1e-10)
    assert tangent.abs().max() > 0
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["block", "selective"])
def test_a_checkpointed_network_refuses_a_forward_on_dual_tensors(mode: str) -> None:
    net = _wan(mode)
    x, dx, t, text = _inputs()
    with pytest.raises(rr.UserError, match=f"activation_checkpointing: {mode} cannot recompute.*tangent_pass"):
        jvp_with_graph(lambda a, b: net(a, b, text=text), (x, t), (dx, None))


def test_auto_on_the_cpu_runs_the_fused_pass_without_checkpointing() -> None:
    net = _wan("auto")
    x, dx, t, text = _inputs()
    out, tangent = jvp_with_graph(lambda a, b: net(a, b, text=text), (x, t), (dx, None))
    out.sum().backward()
    assert net.checkpointing.decision is not None and net.checkpointing.decision.mode == "none"
    assert tangent.shape == x.shape


GIB = 1024**3


@pytest.mark.parametrize(("dual_per_block", "fits"), [(2 * GIB, True), (9 * GIB, False)])
def test_auto_probes_the_fused_pass_once_and_refuses_it_where_it_would_not_fit(dual_per_block: int, fits: bool) -> None:
    # A fake budget: 20 GiB free (17 after the margin); a plain forward keeps 4 GiB a block, so auto
    # chooses none (two blocks: 8 GiB); the dual forward keeps dual_per_block, 4 or 18 GiB for the two.
    net = _wan("auto")
    ckpt = net.checkpointing
    ckpt.free_memory = lambda device: 20 * GIB
    ckpt.probe = lambda block, args, mode: {"none": 4 * GIB, "selective": 2 * GIB, "block": GIB}[mode]
    dual_probes: list[bool] = []

    def probe_dual(block: nn.Module, args: object) -> int:
        from torch.autograd import forward_ad

        dual_probes.append(forward_ad.unpack_dual(args[0]).tangent is not None)  # type: ignore[index]
        return dual_per_block

    ckpt.probe_dual = probe_dual
    x, dx, t, text = _inputs()

    def fused() -> torch.Tensor:
        out, _ = jvp_with_graph(lambda a, b: net(a, b, text=text), (x, t), (dx, None))
        return out

    net(x, t, text=text).sum().backward()  # a plain training forward decides first: none, no dual probe
    assert ckpt.decision is not None and ckpt.decision.mode == "none" and dual_probes == []
    if not fits:
        with pytest.raises(rr.UserError, match=r"tangent_pass: fused keeps 9\.00 GiB a block.*tangent_pass: separate"):
            fused()
        return
    fused().sum().backward()
    fused().sum().backward()
    assert dual_probes == [True]  # probed once, on the block's dual inputs


def test_fused_pass_with_the_finite_difference_is_a_recipe_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rcm_registry.testing import run_cli
    from rcm_registry.testing.cli_cases import assert_user_error

    losses = "phases.student.losses=[{use: scm, semi_continuous: true, tangent_pass: fused}]"
    recipe = str(Path(__file__).resolve().parents[3] / "recipes/wan2.1/t2v_tiny_rcm.yaml")
    monkeypatch.chdir(tmp_path)
    result = run_cli("validate", recipe, "--set", losses)
    assert_user_error(result, "tangent_pass: fused takes the tangent by forward-mode AD")
