"""activation_checkpointing: auto's decision follows the probe against the memory budget (a fake budget and
probe injected), is taken once at the first training forward and used; every mode recomputes what it says."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rcm_plugins.common.checkpointing import MARGIN, BlockCheckpointing, decide, probe_block, run_checkpointed
from torch import nn

import rcm_registry as rr

GIB = 1024**3
PER_BLOCK = {"none": 4 * GIB, "selective": 2 * GIB, "block": GIB // 4}


@pytest.mark.parametrize(
    ("free", "mode"),
    [
        (200 * GIB, "none"),  # 10 + 20 × 4 = 90 GiB fits
        (70 * GIB, "selective"),  # 10 + 20 × 2 = 50 GiB fits 70 × 0.85, 90 does not
        (40 * GIB, "block"),  # 10 + 20 × 0.25 = 15 GiB
        (10 * GIB, "block"),  # nothing fits: block, said so
    ],
)
def test_decide_picks_the_least_recomputation_that_fits(free: int, mode: str) -> None:
    d = decide(PER_BLOCK, blocks=20, fixed_bytes=10 * GIB, free_bytes=free)
    assert d.mode == mode and d.budget_bytes == int(free * (1 - MARGIN))
    assert ("may not fit" in d.reason) == (free == 10 * GIB)


def test_decide_on_the_cpu_is_none() -> None:
    d = decide({}, blocks=20, fixed_bytes=0, free_bytes=None)
    assert d.mode == "none" and "CPU" in d.reason


def recomputations(net: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> int:
    """How many times the first block ran in one forward + backward (2: it was recomputed)."""
    calls = []
    handle = net.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        net(x, t, text).square().sum().backward()
    finally:
        handle.remove()
    return len(calls)


def tiny_wan(setting: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    net = rr.registry().build(
        "network", "wan2.1-t2v", size="tiny", attention={"use": "math"}, activation_checkpointing=setting
    )
    inputs = (torch.randn(1, 16, 2, 4, 4), torch.rand(1) * 1000, torch.randn(1, 3, net.arch.text_dim))
    return net.train(), inputs


@pytest.mark.parametrize(("setting", "runs"), [("none", 1), (False, 1), ("block", 2), (True, 2), ("selective", 2)])
def test_each_mode_recomputes_as_it_says(setting: Any, runs: int) -> None:
    net, inputs = tiny_wan(setting)
    assert recomputations(net, *inputs) == runs


# Two tiny blocks probed as PER_BLOCK: none needs 8 GiB, selective 4, block 0.5 (+ the tiny training state).
@pytest.mark.parametrize(
    ("free", "mode", "runs"), [(20 * GIB, "none", 1), (6 * GIB, "selective", 2), (2 * GIB, "block", 2)]
)
def test_auto_follows_the_probe_once(free: int, mode: str, runs: int) -> None:
    net, inputs = tiny_wan("auto")
    probed: list[tuple[str, tuple[int, ...]]] = []

    def probe(block: nn.Module, args: Any, m: str) -> int:
        probed.append((m, tuple(args[0].shape)))
        return PER_BLOCK[m]

    ckpt = net.checkpointing
    ckpt.free_memory = lambda device: free
    ckpt.probe = probe
    with torch.no_grad():
        net.eval()(*inputs)  # no graph: nothing decided
    assert ckpt.decision is None
    net.train()
    assert recomputations(net, *inputs) == runs
    decision = ckpt.decision
    assert decision is not None and decision.mode == mode and decision.blocks == 2
    assert [m for m, _ in probed] == ["none", "selective", "block"]
    assert probed[0][1] == (1, 8, net.arch.dim)  # the first block's tokens at this input's shape
    recomputations(net, *inputs)
    assert len(probed) == 3  # decided once
    net.activation_checkpointing = "auto"  # a new setting decides anew
    assert net.checkpointing.decision is None


def test_auto_on_the_cpu_is_none_without_probing() -> None:
    net, inputs = tiny_wan("auto")
    net.checkpointing.probe = lambda *a: pytest.fail("probed on the CPU")
    assert recomputations(net, *inputs) == 1
    assert net.checkpointing.decision.mode == "none" and "CPU" in net.checkpointing.decision.reason


def test_a_bad_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="none, selective, block, auto"):
        BlockCheckpointing("sometimes")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_measures_less_for_more_recomputation() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.LayerNorm(4096), nn.Linear(4096, 1024)).cuda()
    x = torch.randn(8, 2048, 1024, device="cuda")
    kept = {m: probe_block(block, (x,), m) for m in ("none", "selective", "block")}
    assert kept["none"] > kept["selective"] > kept["block"], kept
    assert all(p.grad is None for p in block.parameters())
    out = run_checkpointed(block, "selective", x.requires_grad_())
    assert out.shape == x.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_dual_forward_keeps_more_than_a_plain_one() -> None:
    from rcm_plugins.common.checkpointing import probe_dual_block
    from torch.autograd import forward_ad

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).cuda()
    x = torch.randn(8, 2048, 1024, device="cuda")
    plain = probe_block(block, (x,), "none")
    with forward_ad.dual_level():
        dual = probe_dual_block(block, (forward_ad.make_dual(x, torch.randn_like(x)),))
    assert dual > 1.5 * plain, (dual, plain)
    assert all(p.grad is None for p in block.parameters())
