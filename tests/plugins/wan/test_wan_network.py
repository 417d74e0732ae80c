"""Wan2.1 network behaviour: config resolution, inputs, attention dispatch, precision, strict loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from _wan_helpers import diffusers_kwargs, make_reference
from network_testkit import NetworkChecks, build, rel_err
from rcm_plugins.wan.config import WanT2VConfig, preset
from rcm_plugins.wan.model import WanArch, WanNetwork
from safetensors.torch import load_file, save_file

from rcm_registry.errors import CheckpointError


class TestWanNetwork(NetworkChecks):
    kinds = ("wan2.1-t2v", "wan2.1-i2v")
    timestep_scale = 1000.0
    published: ClassVar[dict[str, tuple[float, float]]] = {"1.3B": (1.3e9, 1.5e9), "14B": (14.0e9, 14.5e9)}
    bad_size = "2B"
    bad_format = "safetensors"
    inconsistent: ClassVar[tuple[dict[str, Any], str]] = (
        {"dim": 100, "num_heads": 3, "ffn_dim": 8, "num_layers": 1},
        "not divisible",
    )

    def published_network(self, size: str) -> torch.nn.Module:
        return WanNetwork(WanArch(**preset(size, i2v=False)), attention=None)

    def test_config_validation_reports_problems(self) -> None:
        super().test_config_validation_reports_problems()
        assert WanT2VConfig(size="tiny").attention == {"use": "sdpa"}  # YAML-shaped until validated


def test_explicit_fields_override_the_size() -> None:
    net = build("wan2.1-t2v", size="tiny", num_layers=1, num_heads=2, attention={"use": "math"})
    assert net.arch.num_layers == 1 and net.arch.num_heads == 2 and net.arch.dim == preset("tiny", i2v=False)["dim"]
    assert len(net.blocks) == 1


class Recording:
    """An attention backend that records what the network hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], float | None]] = []

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
    ) -> torch.Tensor:
        self.calls.append((tuple(q.shape), tuple(k.shape), scale))
        # Views of (B, S, H, D) tensors: the sequence stride spans all heads.
        assert q.stride(2) == q.shape[1] * q.shape[3]
        p = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return p @ v


def test_every_attention_goes_through_the_backend_in_bhsd_layout() -> None:
    arch = WanArch(**preset("tiny", i2v=True))
    backend = Recording()
    net = WanNetwork(arch, backend)
    b, t, h, w = 2, 3, 4, 6
    out = net(
        torch.randn(b, 16, t, h, w),
        torch.rand(b) * 1000,
        torch.randn(b, 7, arch.text_dim),
        image=torch.randn(b, 5, arch.image_dim),
        image_latent=torch.randn(b, 20, t, h, w),
    )
    assert out.shape == (b, 16, t, h, w)
    s, heads, d = t * (h // 2) * (w // 2), arch.num_heads, arch.head_dim
    per_block = [((b, heads, s, d), (b, heads, s, d), None), ((b, heads, s, d), (b, heads, 7, d), None)]
    per_block.append(((b, heads, s, d), (b, heads, 5, d), None))
    assert backend.calls == per_block * arch.num_layers


def test_input_checks() -> None:
    net = build("wan2.1-t2v", size="tiny", attention={"use": "math"})
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.rand(1) * 1000, torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match="not divisible by the patch"):
        net(torch.randn(1, 16, 2, 5, 4), t, text)
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(1, 8, 2, 4, 4), t, text)
    with pytest.raises(ValueError, match="image"):
        net(x, t, text, image=torch.randn(1, 2, 24))
    i2v = build("wan2.1-i2v", size="tiny", attention={"use": "math"})
    with pytest.raises(ValueError, match="image_latent"):
        i2v(x, t, text, image=torch.randn(1, 2, 24))


def test_bf16_network_keeps_the_time_path_in_float32() -> None:
    net = build("wan2.1-t2v", size="tiny", attention={"use": "math"}).eval()
    ref = build("wan2.1-t2v", size="tiny", attention={"use": "math"}).eval()
    ref.load_state_dict(net.state_dict())
    net = net.to(torch.bfloat16)
    t = torch.tensor([999.0, 1.5])
    temb, e = net.time_embedding_of(t, torch.float32)
    assert temb.dtype == e.dtype == torch.float32
    # Only the bf16 rounding of the stored weights separates it from the float32 network's time path.
    _, e32 = ref.time_embedding_of(t, torch.float32)
    assert rel_err(e, e32) < 2e-2
    x = torch.randn(1, 16, 1, 4, 4)
    out = net(x, t[:1], torch.randn(1, 3, 32))
    assert out.dtype == torch.float32  # returned in x's dtype


def _diffusers_dir(tmp_path: Path, **overrides: Any) -> Path:
    ref = make_reference(diffusers_kwargs(heads=2, head_dim=12, layers=2), seed=5)
    ref.save_pretrained(tmp_path)
    return tmp_path


def test_strict_loading_lists_every_bad_key_naming_the_file(tmp_path: Path) -> None:
    directory = _diffusers_dir(tmp_path)
    file = directory / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    del state["blocks.1.attn1.to_q.weight"]
    del state["scale_shift_table"]
    state["blocks.0.attn1.extra.weight"] = torch.zeros(3)
    state["blocks.0.ffn.net.2.bias"] = torch.zeros(7)
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as info:
        build("wan2.1-t2v", weights={"path": str(directory)}, attention={"use": "math"})
    text = str(info.value)
    assert str(file) in text
    assert "missing keys (2)" in text and "unexpected keys (1)" in text and "shape mismatches (1)" in text
    # Keys are named as they are in the file (diffusers layout), with both shapes for a mismatch.
    for key in ("blocks.1.attn1.to_q.weight", "scale_shift_table", "blocks.0.attn1.extra.weight"):
        assert key in text
    assert "blocks.0.ffn.net.2.bias: checkpoint (7), network (24)" in text


def test_size_and_weights_must_agree(tmp_path: Path) -> None:
    directory = _diffusers_dir(tmp_path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build("wan2.1-t2v", size="tiny", weights={"path": str(directory)})
    with pytest.raises(CheckpointError, match=r"wan2\.1-t2v, not wan2\.1-i2v"):
        build("wan2.1-i2v", weights={"path": str(directory)})


def test_weights_load_into_meta_built_network_with_float32_params(tmp_path: Path) -> None:
    directory = _diffusers_dir(tmp_path)
    net = build("wan2.1-t2v", weights={"path": str(directory), "format": "diffusers"}, attention={"use": "math"})
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(CheckpointError, match="another key layout"):
        build("wan2.1-t2v", weights={"path": str(directory), "format": "native"})


@pytest.mark.parametrize("kind", ["wan2.1-t2v", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b"])
@pytest.mark.parametrize("fused", [True, False])
def test_fused_ops_option_switches_the_token_kernels_inside_forward(kind: str, fused: bool) -> None:
    """``fused_ops: false`` runs every block with the fused-op kernels switched off (their references), and
    leaves the switch as it found it; the default keeps them on."""
    from rcm_plugins.common import fused_ops

    net = build(kind, size="tiny", fused_ops=fused, attention={"use": "math"})
    seen: list[bool] = []
    for block in net.modules():
        if type(block).__name__ == "WanBlock":
            block.register_forward_pre_hook(lambda *_: seen.append(fused_ops._enabled))
    arch = net.arch
    channels = arch.in_channels if kind != "wan2.2-i2v-a14b" else arch.out_channels
    x = torch.randn(1, channels, arch.patch_size[0], 2 * arch.patch_size[1], 2 * arch.patch_size[2])
    net(x, torch.tensor([500.0]), torch.randn(1, 3, arch.text_dim))
    assert seen and set(seen) == {fused}
    assert fused_ops._enabled is True
