"""Shared by the Cosmos tests: tiny diffusers reference models, float64 reference runs."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import CosmosTransformer3DModel
from diffusers.models.transformers import transformer_cosmos
from network_testkit import random_reference
from torch import Tensor


def diffusers_kwargs(
    *,
    heads: int = 2,
    head_dim: int = 16,
    layers: int = 2,
    v2w: bool = False,
    mlp_ratio: float = 2.0,
    text_dim: int = 24,
    lora: int = 8,
    rope_scale: tuple[float, float, float] = (1.0, 4.0, 4.0),
    learnable: bool = False,
    padding_mask: bool = False,
    max_size: tuple[int, int, int] = (16, 32, 32),
) -> dict[str, Any]:
    return {
        "in_channels": 17 if v2w else 16,
        "out_channels": 16,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "num_layers": layers,
        "mlp_ratio": mlp_ratio,
        "text_embed_dim": text_dim,
        "adaln_lora_dim": lora,
        "max_size": max_size,
        "patch_size": (1, 2, 2),
        "rope_scale": rope_scale,
        "concat_padding_mask": padding_mask,
        "extra_pos_embed_type": "learnable" if learnable else None,
    }


def make_reference(kwargs: dict[str, Any], seed: int) -> CosmosTransformer3DModel:
    """A diffusers Cosmos model whose every parameter is random (norm weights and position tables too)."""
    return random_reference(CosmosTransformer3DModel, kwargs, seed)


def _is_float32(dtype: Any) -> bool:
    return dtype is torch.float32


@contextlib.contextmanager
def float64_diffusers(model: CosmosTransformer3DModel) -> Iterator[CosmosTransformer3DModel]:
    """Run diffusers' Cosmos in true float64.

    Its RMSNorm, RoPE, rotary application and position-embedding norm cast to float32 explicitly
    (``.float()``, ``.to(torch.float32)``, ``dtype=torch.float32``); inside this context those casts leave
    float64 tensors alone and the RoPE tables are built from float64 ranges. The sinusoidal time ladder is
    left as diffusers (and the original) build it, in float32.
    """
    original_float, original_to = torch.Tensor.float, torch.Tensor.to
    original_norm, original_arange = torch.linalg.vector_norm, torch.arange

    def keep_float(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self if self.dtype == torch.float64 else original_float(self, *args, **kwargs)

    def keep_to(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.dtype == torch.float64:
            args = tuple(torch.float64 if _is_float32(a) else a for a in args)
            if _is_float32(kwargs.get("dtype")):
                kwargs["dtype"] = torch.float64
        return original_to(self, *args, **kwargs)

    def norm64(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if x.dtype == torch.float64 and _is_float32(kwargs.get("dtype")):
            kwargs["dtype"] = torch.float64
        return original_norm(x, *args, **kwargs)

    def arange64(*args: Any, **kwargs: Any) -> Tensor:
        if _is_float32(kwargs.get("dtype")):
            kwargs["dtype"] = torch.float64
        return original_arange(*args, **kwargs)

    rope_forward = model.rope.forward

    def rope64(*args: Any, **kwargs: Any) -> Any:
        torch.arange = arange64  # type: ignore[assignment]
        try:
            return rope_forward(*args, **kwargs)
        finally:
            torch.arange = original_arange  # type: ignore[assignment]

    torch.Tensor.float = keep_float  # type: ignore[method-assign]
    torch.Tensor.to = keep_to  # type: ignore[method-assign]
    torch.linalg.vector_norm = norm64  # type: ignore[assignment]
    model.rope.forward = rope64  # type: ignore[method-assign]
    try:
        yield model.double()
    finally:
        torch.Tensor.float = original_float  # type: ignore[method-assign]
        torch.Tensor.to = original_to  # type: ignore[method-assign]
        torch.linalg.vector_norm = original_norm  # type: ignore[assignment]
        del model.rope.forward


def nearest_resize_stand_in() -> types.SimpleNamespace:
    """What diffusers' Cosmos uses torchvision for: ``transforms.functional.resize(mask, size, NEAREST)``.

    torchvision's tensor path of that call is ``F.interpolate(mode="nearest")``; torchvision itself does
    not import beside this torch build.
    """

    def resize(img: Tensor, size: list[int], interpolation: str = "nearest") -> Tensor:
        return F.interpolate(img, size=tuple(size), mode=interpolation)

    return types.SimpleNamespace(
        functional=types.SimpleNamespace(resize=resize), InterpolationMode=types.SimpleNamespace(NEAREST="nearest")
    )


def run_reference(
    model: CosmosTransformer3DModel,
    x: Tensor,
    t: Tensor,
    text: Tensor,
    *,
    condition_mask: Tensor | None = None,
    padding_mask: Tensor | None = None,
    fps: float | None = None,
) -> Tensor:
    """diffusers' forward in its own dtype; per-frame timesteps (B, T) go in as its (B, 1, T, 1, 1)."""
    dtype = next(model.parameters()).dtype
    timestep = t.to(dtype) if t.ndim == 1 else t.to(dtype).reshape(t.shape[0], 1, t.shape[1], 1, 1)
    with torch.no_grad():
        return model(
            x.to(dtype),
            timestep,
            text.to(dtype),
            fps=fps,
            condition_mask=None if condition_mask is None else condition_mask.to(dtype),
            padding_mask=None if padding_mask is None else padding_mask.to(dtype),
            return_dict=False,
        )[0]


transformer_module = transformer_cosmos
