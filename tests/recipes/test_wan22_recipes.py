"""The tiny Wan2.2 recipes run end to end on the CPU: both A14B experts, one expert alone, the TI2V-5B; their
runs sample, and export through the network's export in both layouts, which load back."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

import rcm_registry as rr
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _run(name: str, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    result = run_cli("run", str(ROOT / "recipes/wan2.2" / name), "--out", str(run_dir), "--no-progress")
    assert result.code == 0, result.err
    sampled = run_cli("sample", str(run_dir), "--steps", "2", "--num", "2", "--out", str(tmp_path / "s.safetensors"))
    assert sampled.code == 0, sampled.err
    return run_dir


def test_a14b_tiny_recipe_runs_and_exports_both_experts_in_both_layouts(tmp_path: Path) -> None:
    run_dir = _run("t2v_a14b_tiny_rcm.yaml", tmp_path)
    trained = load_file(str(run_dir / "checkpoints" / "iter_00000004" / "model.safetensors"))
    assert any(k.startswith("student.high_noise.") for k in trained)
    assert any(k.startswith("student.low_noise.") for k in trained)
    for layout, folders in (
        ("diffusers", ("transformer", "transformer_2")),
        ("native", ("high_noise_model", "low_noise_model")),
    ):
        out = tmp_path / layout
        exported = run_cli("export", str(run_dir), "--format", layout, "--out", str(out), "--dtype", "fp32")
        assert exported.code == 0, exported.err
        assert all((out / folder / "config.json").is_file() for folder in folders)
        net = rr.registry().build("network", "wan2.2-t2v-a14b", weights={"path": str(out)}, attention={"use": "math"})
        assert net.experts == ("high_noise", "low_noise")
    assert json.loads((tmp_path / "diffusers" / "model_index.json").read_text())["boundary_ratio"] == 0.875


def test_one_expert_tiny_recipe_runs_and_exports_that_expert(tmp_path: Path) -> None:
    run_dir = _run("t2v_a14b_tiny_high_noise_rcm.yaml", tmp_path)
    exported = run_cli("export", str(run_dir), "--out", str(tmp_path / "high"), "--dtype", "fp32")
    assert exported.code == 0, exported.err
    assert (tmp_path / "high" / "config.json").is_file()  # one transformer folder, a drop-in transformer/
    net = rr.registry().build(
        "network", "wan2.2-t2v-a14b", expert="high_noise", weights={"path": str(tmp_path / "high")}
    )
    assert net.experts == ("high_noise",)


def test_ti2v_tiny_recipe_runs_and_exports(tmp_path: Path) -> None:
    run_dir = _run("ti2v_tiny_rcm.yaml", tmp_path)
    exported = run_cli("export", str(run_dir), "--format", "native", "--out", str(tmp_path / "5b"))
    assert exported.code == 0, exported.err
    assert json.loads((tmp_path / "5b" / "config.json").read_text())["model_type"] == "ti2v"
