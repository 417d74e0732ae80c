"""``rcm export``: a run's EMA student written in the diffusers layout loads back in diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rcm_registry import registry
from rcm_registry.engine.checkpoint import save_checkpoint
from rcm_registry.testing import run_cli

RECIPE = {
    "data": {"use": "random_latents", "shape": [16, 1, 4, 4], "text_length": 4, "text_dim": 32},
    "schedule": {"use": "rectified_flow"},
    "networks": {"student": {"use": "wan2.1-t2v", "size": "tiny", "attention": {"use": "math"}}},
    "phases": {
        "student": {
            "losses": [{"use": "flow_matching"}],
            "optimizer": {"use": "adamw", "lr": 1.0e-4},
            "ema": {"use": "power"},
        }
    },
    "run": {"iterations": 1},
}


def fake_run(tmp_path: Path, recipe: dict | None = None) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A run directory whose checkpoint holds distinct raw and EMA weights for a tiny Wan student."""
    raw = registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    ema = registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    run_dir = tmp_path / "run"
    save_checkpoint(
        run_dir, 1, models={"student": raw.state_dict()}, emas={"student": ema.state_dict()},
        optimizers={}, state={}, recipe=recipe or RECIPE, keep=1,
    )  # fmt: skip
    return run_dir, raw, ema


@pytest.mark.parametrize(
    "inference", [{}, {"fp8_linear": True, "cuda_graphs": True}], ids=["plain", "with sampling options"]
)
def test_export_diffusers_loads_back_with_equal_outputs(tmp_path: Path, inference: dict) -> None:
    """The recipe's ``inference:`` options are for sampling: the export writes the weights as trained (and
    does not refuse a CPU for the CUDA graphs it does not use)."""
    from diffusers import WanTransformer3DModel
    from rcm_plugins.common.diffusers_interop import from_pretrained_strict

    run_dir, _, ema = fake_run(tmp_path, {**RECIPE, "inference": inference})
    out = tmp_path / "exported"
    result = run_cli("export", str(run_dir), "--format", "diffusers", "--dtype", "fp32", "--out", str(out))
    assert result.code == 0, result.err
    assert "EMA weights" in result.out
    theirs = from_pretrained_strict(WanTransformer3DModel, out).eval()
    arch = ema.arch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, arch.in_channels, 1, 4, 6, generator=g)
    t = torch.tensor([500.0])
    text = torch.randn(1, 5, arch.text_dim, generator=g)
    with torch.no_grad():
        ours = ema(x, t, text)
        ref = theirs(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert ((ours - ref).norm() / ref.norm()).item() <= 1e-5


def test_export_refuses_to_overwrite_and_says_so(tmp_path: Path) -> None:
    run_dir, _, _ = fake_run(tmp_path)
    out = tmp_path / "exported"
    out.mkdir()
    result = run_cli("export", str(run_dir), "--format", "native", "--out", str(out))
    assert result.code == 2 and "already exists" in result.err


def test_export_of_a_network_without_export_is_a_user_error(tmp_path: Path) -> None:
    recipe = {**RECIPE, "data": {"use": "gaussian_mixture_2d"}, "networks": {"student": {"use": "mlp"}}}
    mlp = registry().build("network", "mlp")
    save_checkpoint(
        tmp_path / "run", 1, models={"student": mlp.state_dict()}, emas={}, optimizers={}, state={},
        recipe=recipe, keep=1,
    )  # fmt: skip
    result = run_cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "x"))
    assert result.code == 2 and "has no export" in result.err


def test_export_rcm_release_writes_the_ema_as_net_in_bf16(tmp_path: Path) -> None:
    run_dir, raw, ema = fake_run(tmp_path)
    out = tmp_path / "out" / "student.pt"
    result = run_cli("export", str(run_dir), "--format", "rcm-release", "--out", str(out))
    assert result.code == 0, result.err
    stored = torch.load(out, weights_only=True)
    ours = ema.state_dict()
    assert stored.keys() == {f"net.{k}" for k in ours}
    for key, value in ours.items():
        expected = value.to(torch.bfloat16)
        if key == "patch_embedding.weight":  # the release's Linear over flattened (c kt kh kw) patches
            expected = expected.reshape(expected.shape[0], -1)
        assert stored[f"net.{key}"].dtype == torch.bfloat16 and torch.equal(stored[f"net.{key}"], expected), key
    assert not torch.equal(stored["net.head.head.weight"], raw.state_dict()["head.head.weight"].bfloat16())
    folder = tmp_path / "not-a-file"
    result = run_cli("export", str(run_dir), "--format", "rcm-release", "--out", str(folder))
    assert result.code == 2 and "name it FILE.pt" in result.err and not folder.exists()
