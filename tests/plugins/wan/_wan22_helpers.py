"""Shared by the Wan2.2 tests: tiny random A14B repositories written in both layouts, as the releases ship them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from _wan_helpers import diffusers_kwargs, make_reference
from diffusers import WanTransformer3DModel
from rcm_plugins.common import weights
from rcm_plugins.wan import checkpoint
from torch import Tensor

#: The published boundaries (diffusers' boundary_ratio) of the A14B models.
BOUNDARY = {"t2v": 0.875, "i2v": 0.9}


def a14b_kwargs(kind: str) -> dict[str, Any]:
    """A tiny expert config: the I2V expert takes 20 conditioning channels besides 16 noisy ones, no CLIP."""
    return diffusers_kwargs(heads=2, head_dim=12, layers=2, in_channels=36 if kind == "i2v" else 16)


def make_experts(kind: str, seed: int) -> tuple[WanTransformer3DModel, WanTransformer3DModel]:
    """(high-noise, low-noise) random diffusers experts of one architecture, different weights."""
    kwargs = a14b_kwargs(kind)
    return make_reference(kwargs, seed), make_reference(kwargs, seed + 100)


def write_diffusers_repository(
    root: Path, experts: tuple[WanTransformer3DModel, WanTransformer3DModel], kind: str, boundary: float | None = None
) -> Path:
    """``transformer/``, ``transformer_2/`` and model_index.json, as the ``...-A14B-Diffusers`` repositories."""
    high, low = experts
    high.save_pretrained(root / "transformer")
    low.save_pretrained(root / "transformer_2")
    index = {
        "_class_name": "WanPipeline" if kind == "t2v" else "WanImageToVideoPipeline",
        "_diffusers_version": "0.35.0.dev0",
        "boundary_ratio": BOUNDARY[kind] if boundary is None else boundary,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def native_config_json(model: WanTransformer3DModel, kind: str) -> dict[str, Any]:
    """A native Wan2.2 config.json, written as the releases' are (their keys; no boundary, no CLIP)."""
    c = model.config
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.33.0",
        "dim": c.num_attention_heads * c.attention_head_dim,
        "eps": c.eps,
        "ffn_dim": c.ffn_dim,
        "freq_dim": c.freq_dim,
        "in_dim": c.in_channels,
        "model_type": kind,
        "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "out_dim": c.out_channels,
        "text_dim": c.text_dim,
        "text_len": 512,
    }


def write_native_checkpoint(folder: Path, model: WanTransformer3DModel, kind: str) -> Path:
    """One native transformer folder: config.json and sharded safetensors in the native key layout."""
    folder.mkdir(parents=True)
    native: dict[str, Tensor] = checkpoint.from_diffusers(model.state_dict())
    weights.write_safetensors(native, folder, max_shard_bytes=60_000)
    (folder / "config.json").write_text(json.dumps(native_config_json(model, kind)))
    return folder


def write_native_repository(
    root: Path, experts: tuple[WanTransformer3DModel, WanTransformer3DModel], kind: str
) -> Path:
    """``high_noise_model/`` and ``low_noise_model/`` (and a stray VAE pickle, as in the release folders)."""
    write_native_checkpoint(root / "high_noise_model", experts[0], kind)
    write_native_checkpoint(root / "low_noise_model", experts[1], kind)
    torch.save({"not": torch.zeros(1)}, root / "Wan2.1_VAE.pth")
    return root
