"""Shared by the Wan tests: tiny diffusers reference models, float64 reference runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from network_testkit import random_reference
from rcm_plugins.common.diffusers_interop import from_pretrained_strict
from torch import Tensor

#: Text length the diffusers I2V model requires (it splits image from text tokens at len − 512).
DIFFUSERS_I2V_TEXT = 512


def diffusers_kwargs(
    *,
    heads: int,
    head_dim: int,
    layers: int,
    ffn: int = 40,
    text_dim: int = 24,
    freq_dim: int = 32,
    cross_attn_norm: bool = True,
    eps: float = 1e-6,
    image_dim: int | None = None,
    in_channels: int | None = None,
    out_channels: int = 16,
) -> dict[str, Any]:
    """A tiny WanTransformer3DModel config; ``in_channels`` defaults to Wan2.1's (36 with image_dim, else 16)."""
    i2v = image_dim is not None
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": in_channels or (36 if i2v else 16),
        "out_channels": out_channels,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "ffn_dim": ffn,
        "num_layers": layers,
        "cross_attn_norm": cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": eps,
        "image_dim": image_dim,
        "added_kv_proj_dim": heads * head_dim if i2v else None,
    }


def make_reference(kwargs: dict[str, Any], seed: int) -> WanTransformer3DModel:
    """A diffusers Wan model whose every parameter is random (norm weights too, not just ones/zeros)."""
    return random_reference(WanTransformer3DModel, kwargs, seed)


@contextlib.contextmanager
def float64_diffusers(model: WanTransformer3DModel) -> Iterator[WanTransformer3DModel]:
    """Run diffusers' Wan in true float64.

    Its norms, modulation and RoPE tables call ``Tensor.float()``, which would round a float64 run to
    float32; inside this context ``.float()`` leaves float64 tensors alone, and the RoPE tables (buffers
    made at construction) are rebuilt in float64.
    """
    original = torch.Tensor.float

    def keep_float64(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    torch.Tensor.float = keep_float64  # type: ignore[method-assign]
    try:
        rope = model.rope
        model.rope = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
        yield model.double()
    finally:
        torch.Tensor.float = original  # type: ignore[method-assign]


def run_reference(
    model: WanTransformer3DModel, x: Tensor, t: Tensor, text: Tensor, image: Tensor | None, latent: Tensor | None
) -> Tensor:
    dtype = next(model.parameters()).dtype
    inputs = x if latent is None else torch.cat((x, latent), dim=1)
    with torch.no_grad():
        out = model(
            inputs.to(dtype),
            t.to(dtype),
            text.to(dtype),
            encoder_hidden_states_image=None if image is None else image.to(dtype),
            return_dict=False,
        )[0]
    return out


def save_reference(model: WanTransformer3DModel, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def from_pretrained(directory: Path) -> WanTransformer3DModel:
    """``WanTransformer3DModel.from_pretrained(directory)``, asserting that every key was used."""
    return from_pretrained_strict(WanTransformer3DModel, directory)
