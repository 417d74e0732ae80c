"""Exporting our Cosmos network: diffusers and native directories, loadable and complete or absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _cosmos_helpers import build, rel_err
from diffusers import CosmosTransformer3DModel
from rcm_plugins.common.diffusers_interop import from_pretrained_strict
from rcm_plugins.cosmos import checkpoint

from rcm_registry import weights
from rcm_registry.errors import CheckpointError


def _trained_like(name: str, seed: int, **overrides: object) -> torch.nn.Module:
    """A tiny network with every parameter moved off its init (as after training)."""
    torch.manual_seed(seed)
    net = build(name, size="tiny", attention={"use": "math"}, **overrides).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def _inputs(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"x": torch.randn(2, 16, 3, 4, 6, generator=g), "t": torch.rand(2, generator=g)}
    out["text"] = torch.randn(2, 5, net.arch.text_dim, generator=g)
    if net.arch.v2w:
        mask = torch.zeros(2, 1, 3, 4, 6)
        mask[:, :, :1] = 1.0
        out["condition_mask"] = mask
    return out


def _ours(net: torch.nn.Module, i: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return net(i["x"], i["t"], i["text"], condition_mask=i.get("condition_mask"))


@pytest.mark.parametrize("name", ["cosmos-predict2-t2i", "cosmos-predict2-v2w"])
@pytest.mark.parametrize("shard", [False, True])
def test_diffusers_export_loads_in_diffusers(name: str, shard: bool, tmp_path: Path) -> None:
    # No padding-mask channel (diffusers would need torchvision to run it); diffusers' q/k eps, which its
    # config cannot carry, so that both sides compute the same function.
    net = _trained_like(name, seed=11, concat_padding_mask=False, learnable_pos_embed=True, qk_norm_eps=1e-5)
    out = tmp_path / "student"
    checkpoint.export(
        net, out, format="diffusers", max_shard_bytes=20_000 if shard else weights.DEFAULT_MAX_SHARD_BYTES
    )
    assert (out / "diffusion_pytorch_model.safetensors.index.json").exists() == shard
    ref = from_pretrained_strict(CosmosTransformer3DModel, out)
    assert ref.config.in_channels == (17 if name.endswith("v2w") else 16)
    i = _inputs(net, seed=12)
    with torch.no_grad():
        expected = ref(
            i["x"], i["t"], i["text"], fps=net.default_fps, condition_mask=i.get("condition_mask"), return_dict=False
        )[0]
    assert rel_err(_ours(net, i), expected) <= 1e-5
    # And back into ours from the exported directory, architecture from its config.json.
    again = build(name, weights={"path": str(out)}, attention={"use": "math"}).eval()
    assert again.arch == net.arch
    assert rel_err(_ours(again, i), _ours(net, i)) == 0.0


def test_native_export_round_trips_and_uses_native_names(tmp_path: Path) -> None:
    net = _trained_like("cosmos-predict2-v2w", seed=13)
    out = tmp_path / "native"
    net.export(out, format="native", dtype=torch.float64)
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "MinimalV1LVGDiT" and config["model_channels"] == net.arch.dim
    stored = weights.read_state_dict(out)
    assert "blocks.0.adaln_modulation_mlp.2.weight" in stored
    assert stored["x_embedder.proj.1.weight"].dtype == torch.float64
    again = build("cosmos-predict2-v2w", weights={"path": str(out)}, attention={"use": "math"}).eval()
    assert again.arch == net.arch
    i = _inputs(net, seed=14)
    assert rel_err(_ours(again, i), _ours(net, i)) <= 1e-6


def test_export_of_a_state_dict_needs_and_checks_the_arch(tmp_path: Path) -> None:
    net = _trained_like("cosmos-predict2-t2i", seed=15)
    state = net.state_dict()
    with pytest.raises(ValueError, match="arch"):
        checkpoint.export(state, tmp_path / "a")
    partial = {k: v for k, v in state.items() if not k.startswith("final_layer.")}
    with pytest.raises(CheckpointError, match=r"final_layer\.linear\.weight"):
        checkpoint.export(partial, tmp_path / "b", arch=net.arch)
    assert not (tmp_path / "b").exists()
    checkpoint.export(state, tmp_path / "c", arch=net.arch)
    assert (tmp_path / "c" / "config.json").exists()


def test_export_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _trained_like("cosmos-predict2-t2i", seed=16)
    out = tmp_path / "student"

    def fail(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(weights, "write_config", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.export(net, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    checkpoint.export(net, out)
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoint.export(net, out)
    net.export(out, format="native", overwrite=True)
    assert json.loads((out / "config.json").read_text())["_class_name"] == "MiniTrainDIT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
