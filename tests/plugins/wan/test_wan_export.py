"""Exporting our Wan network: diffusers and native directories, loadable and complete or absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _wan_helpers import build, from_pretrained, rel_err
from rcm_plugins.wan import checkpoint

from rcm_registry import weights
from rcm_registry.errors import CheckpointError


def _trained_like(name: str, seed: int) -> torch.nn.Module:
    """A tiny network with every parameter moved off its init (as after training)."""
    torch.manual_seed(seed)
    net = build(name, size="tiny", attention={"use": "math"}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def _inputs(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    arch = net.arch
    out = {"x": torch.randn(2, 16, 3, 4, 6, generator=g), "t": torch.rand(2, generator=g) * 1000}
    out["text"] = torch.randn(2, 512 if arch.i2v else 6, arch.text_dim, generator=g)
    if arch.i2v:
        out["image"] = torch.randn(2, 3, arch.image_dim, generator=g)
        out["latent"] = torch.randn(2, 20, 3, 4, 6, generator=g)
    return out


def _ours(net: torch.nn.Module, i: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        if "image" in i:
            return net(i["x"], i["t"], i["text"], image=i["image"], image_latent=i["latent"])
        return net(i["x"], i["t"], i["text"])


@pytest.mark.parametrize("name", ["wan2.1-t2v", "wan2.1-i2v"])
@pytest.mark.parametrize("shard", [False, True])
def test_diffusers_export_loads_in_diffusers(name: str, shard: bool, tmp_path: Path) -> None:
    net = _trained_like(name, seed=11)
    out = tmp_path / "student"
    checkpoint.export(
        net, out, format="diffusers", max_shard_bytes=20_000 if shard else weights.DEFAULT_MAX_SHARD_BYTES
    )
    assert (out / "diffusion_pytorch_model.safetensors.index.json").exists() == shard
    ref = from_pretrained(out)
    i = _inputs(net, seed=12)
    with torch.no_grad():
        inputs = torch.cat((i["x"], i["latent"]), 1) if "latent" in i else i["x"]
        expected = ref(inputs, i["t"], i["text"], encoder_hidden_states_image=i.get("image"), return_dict=False)[0]
    assert rel_err(_ours(net, i), expected) <= 1e-5


def test_native_export_round_trips_and_uses_native_names(tmp_path: Path) -> None:
    net = _trained_like("wan2.1-i2v", seed=13)
    out = tmp_path / "native"
    checkpoint.export(net, out, format="native", dtype=torch.float64)
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "WanModel" and config["model_type"] == "i2v" and config["dim"] == net.arch.dim
    stored = weights.read_state_dict(out)
    assert "blocks.0.cross_attn.k_img.weight" in stored and stored["head.modulation"].dtype == torch.float64
    again = build("wan2.1-i2v", weights={"path": str(out)}, attention={"use": "math"}).eval()
    assert again.arch == net.arch
    i = _inputs(net, seed=14)
    assert rel_err(_ours(again, i), _ours(net, i)) <= 1e-6


def test_export_of_a_state_dict_needs_and_checks_the_arch(tmp_path: Path) -> None:
    net = _trained_like("wan2.1-t2v", seed=15)
    state = net.state_dict()
    with pytest.raises(ValueError, match="arch"):
        checkpoint.export(state, tmp_path / "a")
    partial = {k: v for k, v in state.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match=r"head\.modulation"):
        checkpoint.export(partial, tmp_path / "b", arch=net.arch)
    assert not (tmp_path / "b").exists()
    checkpoint.export(state, tmp_path / "c", arch=net.arch)
    assert (tmp_path / "c" / "config.json").exists()


def test_export_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _trained_like("wan2.1-t2v", seed=16)
    out = tmp_path / "student"

    def fail(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(weights, "write_config", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.export(net, out)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory is left
    monkeypatch.undo()

    checkpoint.export(net, out)
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoint.export(net, out)
    net.export(out, format="native", overwrite=True)
    assert json.loads((out / "config.json").read_text())["_class_name"] == "WanModel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
