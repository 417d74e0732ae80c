"""Inference options of ``rcm sample`` / ``rcm generate`` (the recipe's ``inference:`` section and the
``--attention`` / ``--fp8-linear`` flags): they change the sampled network, never the training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry.engine.fp8_linear import Fp8Linear
from rcm_registry.engine.inference import InferenceOptions, apply_after_loading
from rcm_registry.engine.sampling import open_checkpoint
from rcm_registry.engine.trainer import autocast
from rcm_registry.testing import run_cli
from rcm_registry.testing.fixtures import rel_err

ROOT = Path(__file__).resolve().parents[3]
MOVING = str(ROOT / "recipes/moving_digits/teacher_tiny.yaml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny moving-digits teacher (sdpa attention) trained with ``inference:`` options in its recipe: if
    training used them, int8_sage would refuse the gradients on the first step."""
    out = tmp_path_factory.mktemp("inference") / "run"
    done = run_cli(
        "run", MOVING, "--out", str(out), "--no-progress", "--set", "run.iterations=2", "--set", "run.batch_size=4",
        "--set", "metrics=[]", "--set", "inference.attention.use=int8_sage", "--set", "inference.fp8_linear=true",
    )  # fmt: skip
    assert done.code == 0, done.err
    return out


def sample(run_dir: Path, out: Path, *flags: str) -> tuple[torch.Tensor, str]:
    result = run_cli("sample", str(run_dir), "--steps", "2", "--num", "4", "--out", str(out), *flags)
    assert result.code == 0, result.err
    return load_file(str(out))["samples"], result.out


def test_the_recipe_section_applies_to_sampling(run_dir: Path) -> None:
    run = open_checkpoint(run_dir)
    assert run.inference.attention is not None and run.inference.attention.name == "int8_sage"
    assert run.inference.fp8_linear
    assert repr(run.net.wan.attention).startswith("Int8SageAttention")
    assert any(isinstance(m, Fp8Linear) for m in run.net.wan.blocks.modules())


def test_flags_override_the_recipe_and_cost_little(run_dir: Path, tmp_path: Path) -> None:
    base, text = sample(run_dir, tmp_path / "base.safetensors", "--attention", "sdpa")
    assert "attention sdpa, fp8 linear" in text  # the recipe's fp8_linear stays on
    run = open_checkpoint(run_dir, attention="sdpa", fp8_linear=False)
    assert run.inference.describe() == "attention sdpa"
    assert not any(isinstance(m, Fp8Linear) for m in run.net.modules())
    exact = run_cli(
        "sample", str(run_dir), "--steps", "2", "--num", "4", "--out", str(tmp_path / "exact.safetensors"),
        "--attention", "math",
    )  # fmt: skip
    assert exact.code == 0, exact.err
    lowprec, text = sample(run_dir, tmp_path / "lowprec.safetensors")
    assert "attention int8_sage, fp8 linear" in text
    full = load_file(str(tmp_path / "exact.safetensors"))["samples"]
    # Same seeds: the samples differ only by the 8-bit arithmetic of the two options.
    assert 0 < rel_err(lowprec, full) <= 0.1
    assert 0 < rel_err(base, full) <= 0.1


class _DtypeRecorder:
    """An attention backend that notes the dtypes of every (q, k, v) it is handed, then attends with ``attn``."""

    def __init__(self, attn: Any) -> None:
        self.attn = attn
        self.seen: list[tuple[torch.dtype, ...]] = []

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        self.seen.append((q.dtype, k.dtype, v.dtype))
        return self.attn(q, k, v, scale=scale)  # type: ignore[no-any-return]


def _tiny(name: str, attention: str, fp8: bool, state: dict[str, Tensor]) -> nn.Module:
    """The tiny network with ``state``'s fp32 weights, loaded as open_checkpoint loads it with these options."""
    net = rr.registry().build("network", name, size="tiny", attention={"use": attention})
    net.load_state_dict(state)
    net.eval().requires_grad_(False)
    net = apply_after_loading(net, InferenceOptions(fp8_linear=fp8))
    net.attention = _DtypeRecorder(net.attention)
    return net


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["cosmos-predict2-t2i", "cosmos-predict2-v2w", "wan2.1-t2v"])
def test_int8_attention_and_fp8_linears_together_match_each_alone(name: str, precision: str) -> None:
    """fp32 weights (what a bf16 recipe trains) sampled under the recipe's autocast, as ``rcm generate`` does: the
    two options together hand the attention the dtypes that each alone does, and their output differs from
    each option's by the other's error (the FP8 linears' few per cent, the INT8 attention's about one)."""
    torch.manual_seed(0)
    base = rr.registry().build("network", name, size="tiny", attention={"use": "math"})
    arch, state = base.arch, base.state_dict()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, arch.in_channels, 2, 8, 8, generator=g)
    # Wan's time is in [0, 1000], Cosmos' σ/(σ + 1) in [0, 1].
    t = torch.tensor([300.0, 800.0]) if name.startswith("wan") else torch.tensor([0.3, 0.8])
    text = torch.randn(2, 7, arch.text_dim, generator=g)
    outputs, seen = {}, {}
    for label, attention, fp8 in (
        ("plain", "math", False), ("int8", "int8_sage", False), ("fp8", "math", True), ("both", "int8_sage", True)
    ):  # fmt: skip
        net = _tiny(name, attention, fp8, state)
        with torch.no_grad(), autocast(torch.device("cpu"), precision):
            outputs[label] = net(x, t, text)
        seen[label] = net.attention.seen
    autocast_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for label in outputs:
        assert outputs[label].dtype == torch.float32, label
        # Every attention call (self and cross) gets q, k and v in one dtype, the same with every option.
        assert seen[label] and set(seen[label]) == {(autocast_dtype,) * 3}, (label, set(seen[label]))
    assert 0 < rel_err(outputs["both"], outputs["fp8"]) <= 2.5e-2  # the INT8 attention's error
    assert 0 < rel_err(outputs["both"], outputs["int8"]) <= 5e-2  # the FP8 linears'
    assert rel_err(outputs["both"], outputs["plain"]) <= 5e-2
