"""Inference options of ``rcm sample`` / ``rcm generate`` (the recipe's ``inference:`` section and the
``--attention`` / ``--fp8-linear`` flags): they change the sampled network, never the training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rcm_registry.engine.fp8_linear import Fp8Linear
from rcm_registry.engine.sampling import open_checkpoint
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
