"""Wan checkpoints: native ↔ diffusers key layouts, config.json translation, strict loading, export.

Our parameter names are the native Wan2.1 ones (``Wan-AI/Wan2.1-T2V-1.3B`` and friends ship them), so the
only mapping needed is native ↔ diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
``diffusers.WanTransformer3DModel``). The rCM release's checkpoints (:mod:`rcm_plugins.common.release`)
are native too, under a ``net.`` prefix, with ``patch_embedding`` a Linear over flattened patches
(:func:`from_release`, :func:`to_release`). Every Wan2.2 transformer (each A14B expert, the TI2V-5B) is one such
checkpoint too; its native config.json differs only in what ``model_type`` means (``release="2.2"``).
Key correspondences were checked against diffusers' ``convert_wan_transformer_to_diffusers``
(diffusers/loaders/single_file_utils.py) and the module structure of ``WanTransformer3DModel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from rcm_plugins.common import release, weights
from rcm_plugins.common.export import ExportFormat, Format, Layouts, export_network
from rcm_plugins.common.keys import KeyMap
from rcm_plugins.common.loading import (
    WeightsFormat,
    arch_from_config_file,
    checked_arch,
    load_state,
    read_state,
)
from rcm_plugins.wan.model import WanArch, WanNetwork
from torch import Tensor, nn

from rcm_registry.errors import CheckpointError

DIFFUSERS_CLASS = "WanTransformer3DModel"
NATIVE_CLASS = "WanModel"
#: The oldest diffusers release with WanTransformer3DModel; written into exported configs.
DIFFUSERS_VERSION = "0.33.0"
#: The Wan release a native config.json comes from: ``model_type`` ``i2v`` has CLIP image layers in Wan2.1
#: and none in Wan2.2 (I2V-A14B), and Wan2.2 adds ``ti2v`` (TI2V-5B). Their config.json files do not say.
Release = Literal["2.1", "2.2"]
_NATIVE_MODEL_TYPES: dict[str, tuple[str, ...]] = {"2.1": ("t2v", "i2v"), "2.2": ("t2v", "i2v", "ti2v")}
#: Prefix some single-file native checkpoints (ComfyUI) put in front of every key.
_FOREIGN_PREFIX = "model.diffusion_model."

# Native module path → diffusers module path; the leaf (weight/bias) is kept. Parameters that are not
# inside a submodule (modulation) are listed with their full name.
_TOP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    # The affine norm before cross-attention is norm3 natively and norm2 in diffusers.
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
#: Keys some diffusers I2V checkpoints carry that WanTransformer3DModel itself ignores on load.
DIFFUSERS_IGNORED = (r"\.norm_added_q\.",)

#: Both directions between the layouts; the module-level names below are the public renaming API.
KEYS = KeyMap(_TOP, _BLOCK)
native_to_diffusers_key = KEYS.native_to_diffusers_key
diffusers_to_native_key = KEYS.diffusers_to_native_key
to_diffusers = KEYS.to_diffusers
from_diffusers = KEYS.from_diffusers


# -- config.json -----------------------------------------------------------------------------------------

# WanTransformer3DModel's constructor defaults: a config.json may leave any of them out.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "pos_embed_seq_len": None,
}


def diffusers_config(arch: WanArch) -> dict[str, Any]:
    """The config.json that makes ``WanTransformer3DModel.from_pretrained`` build this architecture."""
    return {
        "_class_name": DIFFUSERS_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "patch_size": list(arch.patch_size),
        "num_attention_heads": arch.num_heads,
        "attention_head_dim": arch.head_dim,
        "in_channels": arch.in_channels,
        "out_channels": arch.out_channels,
        "text_dim": arch.text_dim,
        "freq_dim": arch.freq_dim,
        "ffn_dim": arch.ffn_dim,
        "num_layers": arch.num_layers,
        "cross_attn_norm": arch.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": arch.eps,
        "image_dim": arch.image_dim,
        # The image tokens are projected to the model width before their k/v projections.
        "added_kv_proj_dim": arch.dim if arch.i2v else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }


def arch_from_diffusers_config(config: Mapping[str, Any], *, source: str = "config.json") -> WanArch:
    """The architecture a diffusers ``WanTransformer3DModel`` config.json describes."""
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    dim = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    problems = []
    if c["qk_norm"] != "rms_norm_across_heads":
        problems.append(f"qk_norm {c['qk_norm']!r} (only 'rms_norm_across_heads', as in Wan2.1, is supported)")
    if c["pos_embed_seq_len"] is not None:
        problems.append("pos_embed_seq_len is set (first-last-frame models are not supported)")
    if c["image_dim"] is not None and c["added_kv_proj_dim"] not in (None, dim):
        problems.append(f"added_kv_proj_dim {c['added_kv_proj_dim']} differs from the model width {dim}")
    if (c["image_dim"] is None) != (c["added_kv_proj_dim"] is None):
        problems.append("image_dim and added_kv_proj_dim must be given together (I2V) or not at all (T2V)")
    if problems:
        raise CheckpointError(f"{source}: unsupported Wan configuration: " + "; ".join(problems))
    return checked_arch(
        WanArch,
        source,
        dim=dim,
        ffn_dim=int(c["ffn_dim"]),
        num_heads=int(c["num_attention_heads"]),
        num_layers=int(c["num_layers"]),
        in_channels=int(c["in_channels"]),
        out_channels=int(c["out_channels"] or c["in_channels"]),
        text_dim=int(c["text_dim"]),
        freq_dim=int(c["freq_dim"]),
        patch_size=tuple(int(p) for p in c["patch_size"]),
        eps=float(c["eps"]),
        cross_attn_norm=bool(c["cross_attn_norm"]),
        image_dim=None if c["image_dim"] is None else int(c["image_dim"]),
    )


def native_config(arch: WanArch, *, model_type: str | None = None) -> dict[str, Any]:
    """A config.json in the style of the native Wan releases (``WanModel``); ``model_type`` defaults to
    Wan2.1's (``i2v`` with CLIP image layers, else ``t2v``)."""
    return {
        "_class_name": NATIVE_CLASS,
        "model_type": model_type or ("i2v" if arch.i2v else "t2v"),
        "patch_size": list(arch.patch_size),
        "text_len": 512,
        "in_dim": arch.in_channels,
        "dim": arch.dim,
        "ffn_dim": arch.ffn_dim,
        "freq_dim": arch.freq_dim,
        "text_dim": arch.text_dim,
        "out_dim": arch.out_channels,
        "num_heads": arch.num_heads,
        "num_layers": arch.num_layers,
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": arch.cross_attn_norm,
        "eps": arch.eps,
        # Not a WanModel argument (native I2V hard-codes CLIP ViT-H's 1280); kept so the file round-trips.
        "image_dim": arch.image_dim,
    }


def arch_from_native_config(
    config: Mapping[str, Any], *, source: str = "config.json", release: Release = "2.1"
) -> WanArch:
    """The architecture a native ``WanModel`` config.json of ``release`` describes (WanModel's defaults
    fill gaps)."""
    model_type = config.get("model_type", "t2v")
    known = _NATIVE_MODEL_TYPES[release]
    if model_type not in known:
        raise CheckpointError(
            f"{source}: unsupported Wan{release} model_type {model_type!r} ({', '.join(known)} are supported)"
        )
    if not config.get("qk_norm", True):
        raise CheckpointError(f"{source}: qk_norm false is not supported")
    image_dim = (config.get("image_dim") or (1280 if model_type == "i2v" else None)) if release == "2.1" else None
    return checked_arch(
        WanArch,
        source,
        dim=int(config.get("dim", 2048)),
        ffn_dim=int(config.get("ffn_dim", 8192)),
        num_heads=int(config.get("num_heads", 16)),
        num_layers=int(config.get("num_layers", 32)),
        in_channels=int(config.get("in_dim", 16)),
        out_channels=int(config.get("out_dim", 16)),
        text_dim=int(config.get("text_dim", 4096)),
        freq_dim=int(config.get("freq_dim", 256)),
        patch_size=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
        eps=float(config.get("eps", 1e-6)),
        cross_attn_norm=bool(config.get("cross_attn_norm", True)),
        image_dim=None if image_dim is None else int(image_dim),
    )


# -- reading -----------------------------------------------------------------------------------------------


def _config_class(path: Path) -> str | None:
    config = weights.read_config(path)
    return config.get("_class_name") if config else None


def detect_format(path: str | Path, state_dict: Mapping[str, Tensor] | None = None) -> Format:
    """``diffusers`` or ``native``, from config.json's ``_class_name`` or else from the key names."""
    name = _config_class(Path(path))
    if name == DIFFUSERS_CLASS:
        return "diffusers"
    if name == NATIVE_CLASS:
        return "native"
    if state_dict is not None and any(k.startswith("condition_embedder.") for k in state_dict):
        return "diffusers"
    return "native"


def arch_from_checkpoint(
    path: str | Path, format: WeightsFormat = "auto", *, release: Release = "2.1", sizes: str = "1.3B, 14B, tiny"
) -> WanArch:
    """The architecture described by the config.json of a checkpoint directory (or next to a file) of a
    ``release``; ``sizes`` names the sizes the network offers instead, for the error without a config.json."""
    return arch_from_config_file(
        path,
        format,
        diffusers_class=DIFFUSERS_CLASS,
        detect_format=detect_format,
        from_diffusers=arch_from_diffusers_config,
        from_native=partial(arch_from_native_config, release=release),
        sizes=sizes,
    )


#: The one parameter whose shape differs between native Wan and the rCM release.
PATCH_EMBEDDING = "patch_embedding.weight"


def from_release(state: dict[str, Tensor], patch_size: tuple[int, int, int]) -> dict[str, Tensor]:
    """A network of an rCM release checkpoint (prefix removed) in the native layout.

    The release's ``WanModel`` embeds patches with a Linear over ``(c kt kh kw)``-flattened patches, whose
    weight (dim, C·kt·kh·kw) is the native Conv3d's (dim, C, kt, kh, kw) in that same order, so a reshape
    maps it exactly; every other key is native as it is.
    """
    weight = state.get(PATCH_EMBEDDING)
    if weight is None or weight.dim() != 2:
        return state  # missing or already Conv3d-shaped: strict loading names it
    volume = patch_size[0] * patch_size[1] * patch_size[2]
    if weight.shape[1] % volume:
        raise CheckpointError(
            f"{PATCH_EMBEDDING}: shape {tuple(weight.shape)} does not flatten patches of size {tuple(patch_size)}"
        )
    return {**state, PATCH_EMBEDDING: weight.reshape(weight.shape[0], -1, *patch_size)}


def to_release(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A native state dict in the rCM release's layout: ``net.`` keys, ``patch_embedding`` as its Linear."""
    out = dict(state)
    weight = out.get(PATCH_EMBEDDING)
    if weight is not None and weight.dim() == 5:
        out[PATCH_EMBEDDING] = weight.reshape(weight.shape[0], -1)
    return release.with_prefix(out)


def read_checkpoint(
    path: str | Path,
    format: WeightsFormat = "auto",
    *,
    patch_size: tuple[int, int, int] = (1, 2, 2),
    role: release.Role | None = None,
    ema: bool | None = None,
) -> tuple[dict[str, Tensor], Format]:
    """Read a Wan checkpoint as it is stored, and say which key layout it is in (an rCM release checkpoint:
    network ``role`` of it, mapped to native with ``patch_size``)."""
    return read_state(
        path,
        format,
        prefixes=(_FOREIGN_PREFIX,),
        detect_format=detect_format,
        from_release=partial(from_release, patch_size=patch_size),
        role=role,
        ema=ema,
    )


def load_weights(
    net: WanNetwork,
    path: str | Path,
    format: WeightsFormat = "auto",
    *,
    assign: bool = False,
    role: release.Role | None = None,
    ema: bool | None = None,
) -> Format:
    """Load a native, diffusers or rCM release checkpoint into ``net`` strictly; returns the layout it was
    in (``native`` for the release's: its keys are native).

    Every missing, unexpected or mis-shaped key is reported in one :class:`CheckpointError`, with the
    keys named as they are in the file. ``role`` / ``ema``: which network of a release checkpoint.
    """
    state, kind = read_checkpoint(path, format, patch_size=net.arch.patch_size, role=role, ema=ema)
    load_state(
        net, state, kind, keys=KEYS, source=weights.describe(path), assign=assign, diffusers_ignored=DIFFUSERS_IGNORED
    )
    return kind


# -- export ------------------------------------------------------------------------------------------------


def export(
    source: nn.Module | Mapping[str, Tensor],
    out: str | Path,
    *,
    format: ExportFormat = "diffusers",
    arch: WanArch | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = weights.DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a Wan network (or its state dict) as a checkpoint directory.

    ``format="diffusers"`` writes config.json and ``diffusion_pytorch_model*.safetensors`` loadable by
    ``diffusers.WanTransformer3DModel.from_pretrained(out)``; ``format="native"`` writes the native Wan2.1
    key layout with a ``WanModel`` config.json (loadable by this plugin, and by Wan's own code);
    ``format="rcm-release"`` writes ``out`` as one ``.pt`` in the rCM release's layout (``net.`` keys, what
    its inference script loads with ``--dit_path``). The directory or file appears complete or not at all.
    ``source`` is a :class:`WanNetwork` or a state dict in our layout; the other arguments as for
    :func:`rcm_plugins.common.export.export_network`.
    """
    return export_network(
        LAYOUTS, source, out, format=format, arch=arch, dtype=dtype, overwrite=overwrite,
        max_shard_bytes=max_shard_bytes,
    )  # fmt: skip


LAYOUTS = Layouts(
    network=WanNetwork,
    to_diffusers=to_diffusers,
    diffusers_config=diffusers_config,
    native_config=native_config,
    to_release=to_release,
)
