"""Cosmos-Predict2 checkpoints: native ↔ diffusers key layouts, config.json translation, strict loading, export.

Our parameter names are the native Cosmos-Predict2 ones (``nvidia/Cosmos-Predict2-2B-Text2Image``'s
``model.pt`` holds them under a ``net.`` prefix, which is stripped), so the only mapping needed is native ↔
diffusers (``nvidia/Cosmos-Predict2-2B-Text2Image`` diffusers variant, ``diffusers.CosmosTransformer3DModel``).
The correspondences were checked against diffusers' ``convert_cosmos_transformer_checkpoint_to_diffusers``
(diffusers/loaders/single_file_utils.py, the Cosmos 2.0 table) and the module structure of
``CosmosTransformer3DModel``.

Native files also carry tensors that are not parameters of the network (RoPE index buffers
``pos_embedder.*``, Transformer Engine ``_extra_state`` blobs, training counters ``accum_*``); they are
recomputed or meaningless outside training and are ignored on load and not written on export.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rcm_plugins.common import release, weights
from rcm_plugins.common.export import Format, Layouts, export_network
from rcm_plugins.common.keys import KeyMap
from rcm_plugins.common.loading import (
    WeightsFormat,
    arch_from_config_file,
    checked_arch,
    load_state,
    read_state,
)
from rcm_plugins.cosmos.model import CosmosArch, CosmosNetwork
from torch import Tensor, nn

from rcm_registry.errors import CheckpointError

DIFFUSERS_CLASS = "CosmosTransformer3DModel"
#: Written into native config.json files (the original builds the network from its own config system).
NATIVE_CLASS = "MiniTrainDIT"
#: The first diffusers release with the Cosmos-Predict2 options of CosmosTransformer3DModel.
DIFFUSERS_VERSION = "0.34.0"
#: Prefixes whole-model checkpoints put in front of the network's keys (the training model's ``net``).
_FOREIGN_PREFIXES = ("net.", "model.diffusion_model.")
#: Native tensors that are not network parameters (see the module docstring).
NATIVE_IGNORED = (r"(^|\.)pos_embedder\.", r"_extra_state$", r"^accum_", r"(^|\.)logvar\.")
#: diffusers' q/k norm eps (its Attention default); the original's Transformer Engine RMSNorm uses 1e-6.
DIFFUSERS_QK_EPS = 1e-5

_TOP = {
    "x_embedder.proj.1": "patch_embed.proj",
    "t_embedder.1": "time_embed.t_embedder",
    "t_embedding_norm": "time_embed.norm",
    "extra_pos_embedder": "learnable_pos_embed",
    "final_layer.adaln_modulation.1": "norm_out.linear_1",
    "final_layer.adaln_modulation.2": "norm_out.linear_2",
    "final_layer.linear": "proj_out",
}
_BLOCK = {
    "adaln_modulation_self_attn.1": "norm1.linear_1",
    "adaln_modulation_self_attn.2": "norm1.linear_2",
    "adaln_modulation_cross_attn.1": "norm2.linear_1",
    "adaln_modulation_cross_attn.2": "norm2.linear_2",
    "adaln_modulation_mlp.1": "norm3.linear_1",
    "adaln_modulation_mlp.2": "norm3.linear_2",
    "mlp.layer1": "ff.net.0.proj",
    "mlp.layer2": "ff.net.2",
}
for _native, _diffusers in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    for _a, _b in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("output_proj", "to_out.0")):
        _BLOCK[f"{_native}.{_a}"] = f"{_diffusers}.{_b}"
    for _a, _b in (("q_norm", "norm_q"), ("k_norm", "norm_k")):
        _BLOCK[f"{_native}.{_a}"] = f"{_diffusers}.{_b}"

#: Both directions between the layouts; the module-level names below are the public renaming API.
KEYS = KeyMap(_TOP, _BLOCK, native_blocks="blocks", diffusers_blocks="transformer_blocks")
native_to_diffusers_key = KEYS.native_to_diffusers_key
diffusers_to_native_key = KEYS.diffusers_to_native_key
to_diffusers = KEYS.to_diffusers
from_diffusers = KEYS.from_diffusers


# -- config.json -----------------------------------------------------------------------------------------

# CosmosTransformer3DModel's constructor defaults: a config.json may leave any of them out.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "num_layers": 28,
    "mlp_ratio": 4.0,
    "text_embed_dim": 1024,
    "adaln_lora_dim": 256,
    "max_size": (128, 240, 240),
    "patch_size": (1, 2, 2),
    "rope_scale": (2.0, 1.0, 1.0),
    "concat_padding_mask": True,
    "extra_pos_embed_type": "learnable",
    "use_crossattn_projection": False,
    "controlnet_block_every_n": None,
    "img_context_dim_in": None,
}


def diffusers_config(arch: CosmosArch) -> dict[str, Any]:
    """The config.json that makes ``CosmosTransformer3DModel.from_pretrained`` build this architecture.

    diffusers counts the Video2World condition-mask channel in ``in_channels`` (17).
    """
    return {
        "_class_name": DIFFUSERS_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": arch.in_channels + int(arch.condition_mask),
        "out_channels": arch.out_channels,
        "num_attention_heads": arch.num_heads,
        "attention_head_dim": arch.head_dim,
        "num_layers": arch.num_layers,
        "mlp_ratio": arch.mlp_ratio,
        "text_embed_dim": arch.text_dim,
        "adaln_lora_dim": arch.adaln_lora_dim,
        "max_size": list(arch.max_size),
        "patch_size": list(arch.patch_size),
        "rope_scale": list(arch.rope_scale),
        "concat_padding_mask": arch.concat_padding_mask,
        "extra_pos_embed_type": "learnable" if arch.learnable_pos_embed else None,
    }


def arch_from_diffusers_config(
    config: Mapping[str, Any], *, v2w: bool | None = None, source: str = "config.json"
) -> CosmosArch:
    """The architecture a diffusers ``CosmosTransformer3DModel`` config.json describes.

    Video2World is recognised by ``in_channels == out_channels + 1`` unless ``v2w`` says otherwise.
    """
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    problems = []
    if c["use_crossattn_projection"]:
        problems.append("use_crossattn_projection is set (Cosmos-Predict2.5 text projection is not supported)")
    if c["controlnet_block_every_n"] is not None or c["img_context_dim_in"]:
        problems.append("controlnet / image-context options are set (Cosmos-Transfer is not supported)")
    if c["extra_pos_embed_type"] not in (None, "learnable"):
        problems.append(f"extra_pos_embed_type {c['extra_pos_embed_type']!r} (None or 'learnable')")
    if problems:
        raise CheckpointError(f"{source}: unsupported Cosmos configuration: " + "; ".join(problems))
    in_channels, out_channels = int(c["in_channels"]), int(c["out_channels"])
    if v2w is None:
        v2w = in_channels == out_channels + 1
    return checked_arch(
        CosmosArch,
        source,
        num_heads=int(c["num_attention_heads"]),
        head_dim=int(c["attention_head_dim"]),
        num_layers=int(c["num_layers"]),
        in_channels=in_channels - int(v2w),
        out_channels=out_channels,
        mlp_ratio=float(c["mlp_ratio"]),
        text_dim=int(c["text_embed_dim"]),
        adaln_lora_dim=int(c["adaln_lora_dim"]),
        max_size=tuple(int(m) for m in c["max_size"]),
        patch_size=tuple(int(p) for p in c["patch_size"]),
        rope_scale=tuple(float(r) for r in c["rope_scale"]),
        concat_padding_mask=bool(c["concat_padding_mask"]),
        learnable_pos_embed=c["extra_pos_embed_type"] == "learnable",
        condition_mask=v2w,
        qk_norm_eps=DIFFUSERS_QK_EPS,
    )


def native_config(arch: CosmosArch) -> dict[str, Any]:
    """A config.json with the original ``MiniTrainDIT`` argument names (Video2World: ``MinimalV1LVGDiT``,
    whose ``in_channels`` excludes the condition mask it adds itself)."""
    return {
        "_class_name": "MinimalV1LVGDiT" if arch.condition_mask else NATIVE_CLASS,
        "max_img_h": arch.max_size[1],
        "max_img_w": arch.max_size[2],
        "max_frames": arch.max_size[0],
        "in_channels": arch.in_channels,
        "out_channels": arch.out_channels,
        "patch_spatial": arch.patch_size[1],
        "patch_temporal": arch.patch_size[0],
        "concat_padding_mask": arch.concat_padding_mask,
        "model_channels": arch.dim,
        "num_blocks": arch.num_layers,
        "num_heads": arch.num_heads,
        "mlp_ratio": arch.mlp_ratio,
        "crossattn_emb_channels": arch.text_dim,
        "pos_emb_cls": "rope3d",
        "use_adaln_lora": True,
        "adaln_lora_dim": arch.adaln_lora_dim,
        "rope_t_extrapolation_ratio": arch.rope_scale[0],
        "rope_h_extrapolation_ratio": arch.rope_scale[1],
        "rope_w_extrapolation_ratio": arch.rope_scale[2],
        "extra_per_block_abs_pos_emb": arch.learnable_pos_embed,
        "qk_norm_eps": arch.qk_norm_eps,
    }


def arch_from_native_config(config: Mapping[str, Any], *, source: str = "config.json") -> CosmosArch:
    """The architecture a native (``MiniTrainDIT`` argument names) config.json describes."""
    if not config.get("use_adaln_lora", True):
        raise CheckpointError(f"{source}: use_adaln_lora false is not supported (Cosmos-Predict2 uses AdaLN-LoRA)")
    if config.get("pos_emb_cls", "rope3d") != "rope3d":
        raise CheckpointError(f"{source}: pos_emb_cls {config['pos_emb_cls']!r} is not supported (rope3d)")
    dim, heads = int(config.get("model_channels", 2048)), int(config.get("num_heads", 16))
    spatial = int(config.get("patch_spatial", 2))
    return checked_arch(
        CosmosArch,
        source,
        num_heads=heads,
        head_dim=dim // heads,
        num_layers=int(config.get("num_blocks", 28)),
        in_channels=int(config.get("in_channels", 16)),
        out_channels=int(config.get("out_channels", 16)),
        mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        text_dim=int(config.get("crossattn_emb_channels", 1024)),
        adaln_lora_dim=int(config.get("adaln_lora_dim", 256)),
        max_size=(
            int(config.get("max_frames", 128)),
            int(config.get("max_img_h", 240)),
            int(config.get("max_img_w", 240)),
        ),
        patch_size=(int(config.get("patch_temporal", 1)), spatial, spatial),
        rope_scale=tuple(float(config.get(f"rope_{a}_extrapolation_ratio", 1.0)) for a in "thw"),  # type: ignore[arg-type]
        concat_padding_mask=bool(config.get("concat_padding_mask", True)),
        learnable_pos_embed=bool(config.get("extra_per_block_abs_pos_emb", False)),
        condition_mask=config.get("_class_name") == "MinimalV1LVGDiT",
        qk_norm_eps=float(config.get("qk_norm_eps", 1e-6)),
    )


# -- reading -----------------------------------------------------------------------------------------------


def detect_format(path: str | Path, state_dict: Mapping[str, Tensor] | None = None) -> Format:
    """``diffusers`` or ``native``, from config.json's ``_class_name`` or else from the key names."""
    name = weights.diffusers_class_name(path)
    if name == DIFFUSERS_CLASS:
        return "diffusers"
    if name is not None:
        return "native"
    if state_dict is not None and any(k.startswith(("transformer_blocks.", "patch_embed.")) for k in state_dict):
        return "diffusers"
    return "native"


def arch_from_checkpoint(path: str | Path, format: WeightsFormat = "auto", *, v2w: bool | None = None) -> CosmosArch:
    """The architecture described by the config.json of a checkpoint directory (or next to a file)."""
    return arch_from_config_file(
        path,
        format,
        diffusers_class=DIFFUSERS_CLASS,
        detect_format=detect_format,
        from_diffusers=functools.partial(arch_from_diffusers_config, v2w=v2w),
        from_native=arch_from_native_config,
        sizes="2B, 14B, tiny",
    )


def read_checkpoint(
    path: str | Path, format: WeightsFormat = "auto", *, role: release.Role | None = None, ema: bool | None = None
) -> tuple[dict[str, Tensor], Format]:
    """Read a Cosmos checkpoint as it is stored (wrapper prefixes stripped) and say which layout it is in.

    The rCM release publishes no Cosmos-Predict2 checkpoints, so one in its layout is refused by name."""
    return read_state(path, format, prefixes=_FOREIGN_PREFIXES, detect_format=detect_format, role=role, ema=ema)


def load_weights(
    net: CosmosNetwork,
    path: str | Path,
    format: WeightsFormat = "auto",
    *,
    assign: bool = False,
    role: release.Role | None = None,
    ema: bool | None = None,
) -> Format:
    """Load a native or diffusers checkpoint into ``net`` strictly; returns the layout it was in.

    Every missing, unexpected or mis-shaped key is reported in one :class:`CheckpointError`, with the keys
    named as they are in the file.
    """
    state, kind = read_checkpoint(path, format, role=role, ema=ema)
    load_state(net, state, kind, keys=KEYS, source=weights.describe(path), assign=assign, native_ignored=NATIVE_IGNORED)
    return kind


# -- export ------------------------------------------------------------------------------------------------


def export(
    source: nn.Module | Mapping[str, Tensor],
    out: str | Path,
    *,
    format: Format = "diffusers",
    arch: CosmosArch | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = weights.DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a Cosmos network (or its state dict) as a checkpoint directory.

    ``format="diffusers"`` writes config.json and ``diffusion_pytorch_model*.safetensors`` loadable by
    ``diffusers.CosmosTransformer3DModel.from_pretrained(out)``; ``format="native"`` writes the native
    Cosmos-Predict2 key layout with a config.json of the original's constructor arguments (loadable by this
    plugin). The directory appears complete or not at all.

    Note: diffusers builds the q/k RMSNorm with eps 1e-5 where the original uses 1e-6; a diffusers export
    cannot record the difference (a relative change of the outputs far below bf16 resolution).

    ``source`` is a :class:`CosmosNetwork` or a state dict in our layout; the other arguments as for
    :func:`rcm_plugins.common.export.export_network`.
    """
    return export_network(
        LAYOUTS, source, out, format=format, arch=arch, dtype=dtype, overwrite=overwrite,
        max_shard_bytes=max_shard_bytes,
    )  # fmt: skip


LAYOUTS = Layouts(
    network=CosmosNetwork, to_diffusers=to_diffusers, diffusers_config=diffusers_config, native_config=native_config
)
