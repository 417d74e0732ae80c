"""Wan2.2 checkpoints: the two-expert A14B repositories, native and diffusers, and the TI2V-5B's.

Every Wan2.2 transformer is a Wan checkpoint of :mod:`rcm_plugins.wan.checkpoint` (same keys, same config.json
dialects; native ``model_type`` read as Wan2.2's). What this module adds is where they sit:

* native A14B (``Wan-AI/Wan2.2-T2V-A14B``, ``Wan2.2-I2V-A14B``): ``high_noise_model/`` and
  ``low_noise_model/``, each a native checkpoint folder (``WanModel`` config.json, safetensors shards). The
  expert boundary is in Wan's code (0.875 T2V, 0.900 I2V), not in the files.
* diffusers A14B (``...-A14B-Diffusers``): ``transformer/`` (high-noise) and ``transformer_2/`` (low-noise),
  each a ``WanTransformer3DModel`` directory, and ``model_index.json`` with ``boundary_ratio``.
* TI2V-5B: one transformer, at the root of the native repository (next to the VAE and T5 ``.pth`` files)
  and under ``transformer/`` in the diffusers one (whose model_index.json has ``expand_timesteps: true``).

A network holding one expert also reads that expert's checkpoint folder on its own. Exports write the same
layouts: both experts as a repository, one expert or the 5B as one checkpoint folder. An exported diffusers
repository's model_index.json names the text encoder, tokenizer, VAE and scheduler absent (``[null, null]``,
as diffusers writes a missing component): pass them to ``WanPipeline.from_pretrained``, or copy them in from
the teacher's repository and name them there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rcm_plugins.common import release, weights
from rcm_plugins.common.export import Format, Layouts, export_network
from rcm_plugins.common.loading import WeightsFormat, check_no_release_choice, is_release
from rcm_plugins.wan import checkpoint
from rcm_plugins.wan.experts import EXPERTS, Expert, WanExperts
from rcm_plugins.wan.model import WanArch, WanNetwork
from rcm_plugins.wan.ti2v_model import WanTI2VNetwork

from rcm_registry import atomic
from rcm_registry.errors import CheckpointError

MODEL_INDEX = "model_index.json"
#: Where each expert's checkpoint folder sits in a repository of each layout.
FOLDERS: dict[Format, dict[Expert, str]] = {
    "native": {"high_noise": "high_noise_model", "low_noise": "low_noise_model"},
    "diffusers": {"high_noise": "transformer", "low_noise": "transformer_2"},
}
#: The diffusers release that added Wan2.2 (transformer_2, boundary_ratio, expand_timesteps).
DIFFUSERS_VERSION = "0.35.0"
_PIPELINES = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline"}


def layouts(model_type: str, network: type[WanNetwork] = WanNetwork) -> Layouts:
    """The Wan layouts of one Wan2.2 transformer: native config.json says ``model_type`` (t2v, i2v, ti2v)."""
    return Layouts(
        network=network,
        to_diffusers=checkpoint.to_diffusers,
        diffusers_config=checkpoint.diffusers_config,
        native_config=partial(checkpoint.native_config, model_type=model_type),
    )


TI2V_LAYOUTS = layouts("ti2v", WanTI2VNetwork)


def model_type(arch: WanArch) -> str:
    """``i2v`` for an A14B expert that takes conditioning latents besides the noisy ones, else ``t2v``."""
    return "i2v" if arch.in_channels > arch.out_channels else "t2v"


# -- where the checkpoints are ------------------------------------------------------------------------------


def read_model_index(root: Path) -> dict[str, Any] | None:
    """A diffusers repository's model_index.json, or None when there is none."""
    return weights.read_json_object(root / MODEL_INDEX)


def repository_layout(root: Path, format: WeightsFormat) -> Format | None:
    """The layout of a Wan2.2 repository at ``root`` (``format``, or told apart by its folders), or None
    when ``root`` is not a repository but one checkpoint (a file, or a folder with its own config.json)."""
    if not root.is_dir():
        return None
    found = {kind: any((root / folder).is_dir() for folder in folders.values()) for kind, folders in FOLDERS.items()}
    found["diffusers"] = found["diffusers"] or (root / MODEL_INDEX).is_file()
    if format != "auto":
        other = "native" if format == "diffusers" else "diffusers"
        if found[other] and not found[format]:
            raise CheckpointError(f"{root}: a {other} Wan2.2 repository, not {format} (use format: {other} or auto)")
        return format if found[format] else None
    return "diffusers" if found["diffusers"] else "native" if found["native"] else None


def expert_checkpoints(path: str | Path, format: WeightsFormat, experts: tuple[Expert, ...]) -> dict[Expert, Path]:
    """The checkpoint folder of each of ``experts`` under a Wan2.2 A14B checkpoint ``path``.

    ``path`` is a repository root, or for one expert also that expert's own checkpoint; a missing expert
    folder is a :class:`CheckpointError` naming the repository and the folder.
    """
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: no such file or directory")
    kind = repository_layout(root, format)
    if kind is None:
        if len(experts) == 1:
            return {experts[0]: root}
        raise CheckpointError(
            f"{root}: one checkpoint, and this network holds both Wan2.2 A14B experts: give the repository "
            "root (transformer/ and transformer_2/, or high_noise_model/ and low_noise_model/), or hold one "
            "expert (expert: high_noise or low_noise)"
        )
    out: dict[Expert, Path] = {}
    for expert in experts:
        folder = root / FOLDERS[kind][expert]
        if not folder.is_dir():
            hint = ""
            if kind == "diffusers" and expert == "low_noise":
                hint = f" ({MODEL_INDEX} of a Wan2.1 or Wan2.2-TI2V-5B repository names no transformer_2)"
            raise CheckpointError(f"{root}: no {folder.name}/ (the {expert.replace('_', '-')} expert){hint}")
        out[expert] = folder
    return out


def boundary_of(path: str | Path) -> float | None:
    """The ``boundary_ratio`` of a diffusers repository's model_index.json (None without one)."""
    index = read_model_index(Path(path)) if Path(path).is_dir() else None
    value = index.get("boundary_ratio") if index else None
    return None if value is None else float(value)


def transformer_checkpoint(path: str | Path, format: WeightsFormat) -> Path:
    """The transformer of a one-transformer Wan2.2 checkpoint (TI2V-5B): ``transformer/`` of a diffusers
    repository, else ``path`` itself (the native repository root, or a transformer folder)."""
    root = Path(path)
    if (root / MODEL_INDEX).is_file() and format in ("auto", "diffusers"):
        folder = root / "transformer"
        if not folder.is_dir():
            raise CheckpointError(f"{root}: no transformer/ next to its {MODEL_INDEX}")
        return folder
    return root


# -- reading ------------------------------------------------------------------------------------------------


def arch_from_experts(path: str | Path, format: WeightsFormat, experts: tuple[Expert, ...]) -> WanArch:
    """The expert architecture the config.json files of an A14B checkpoint describe (the same for both)."""
    archs = {
        expert: checkpoint.arch_from_checkpoint(
            folder, _folder_format(folder, format), release="2.2", sizes="a14b, tiny"
        )
        for expert, folder in expert_checkpoints(path, format, experts).items()
    }
    first = next(iter(archs.values()))
    for expert, arch in archs.items():
        if arch != first:
            raise CheckpointError(
                f"{path}: the experts' config.json files describe different architectures ({experts[0]}: {first}, "
                f"{expert}: {arch})"
            )
    return first


def load_experts(
    net: WanExperts,
    path: str | Path,
    format: WeightsFormat = "auto",
    *,
    assign: bool = False,
    role: release.Role | None = None,
    ema: bool | None = None,
) -> None:
    """Load every expert ``net`` holds from an A14B checkpoint strictly (errors name the file and the keys),
    and refuse a repository whose model_index.json puts the expert boundary elsewhere than ``net`` does.

    An rCM release checkpoint holds one transformer (the release's Wan2.2 I2V A14B experts are two files,
    ``...-high-...pt`` and ``...-low-...pt``): a one-expert network reads its expert from one (``role`` /
    ``ema`` pick its network)."""
    if is_release(path, format):
        if len(net.experts) != 1:
            raise CheckpointError(
                f"{path}: an rCM release checkpoint holds one expert; read it with a one-expert network "
                "(`expert: high_noise` or `low_noise`)"
            )
        expert = net.experts[0]
        checkpoint.load_weights(net.expert(expert), path, "rcm-release", assign=assign, role=role, ema=ema)
        return
    check_no_release_choice(path, format, role, ema)
    folders = expert_checkpoints(path, format, net.experts)
    for expert, folder in folders.items():
        checkpoint.load_weights(net.expert(expert), folder, _folder_format(folder, format), assign=assign)
    boundary = boundary_of(path)
    if boundary is not None and abs(boundary - net.boundary) > 1e-9:
        raise CheckpointError(
            f"{Path(path) / MODEL_INDEX}: boundary_ratio {boundary:g}, and this network switches experts at "
            f"{net.boundary:g}: set `boundary: {boundary:g}` in the network config to use the repository's"
        )


def _folder_format(folder: Path, format: WeightsFormat) -> WeightsFormat:
    """An expert folder inside a repository is read in the repository's layout."""
    for kind, names in FOLDERS.items():
        if folder.name in names.values() and repository_layout(folder.parent, format) == kind:
            return kind
    return format


def load_ti2v(
    net: WanTI2VNetwork,
    path: str | Path,
    format: WeightsFormat = "auto",
    *,
    assign: bool = False,
    role: release.Role | None = None,
    ema: bool | None = None,
) -> None:
    """Load a TI2V-5B checkpoint (either repository, or its transformer folder) into ``net`` strictly."""
    checkpoint.load_weights(net, transformer_checkpoint(path, format), format, assign=assign, role=role, ema=ema)


# -- writing ------------------------------------------------------------------------------------------------


def diffusers_model_index(net: WanExperts) -> dict[str, Any]:
    """model_index.json of an exported A14B repository: the two transformers and the boundary; the other
    pipeline components are named absent (copy them in from the teacher's repository)."""
    kind = model_type(net.arch)
    index: dict[str, Any] = {
        "_class_name": _PIPELINES[kind],
        "_diffusers_version": DIFFUSERS_VERSION,
        "boundary_ratio": net.boundary,
        "expand_timesteps": False,
        "transformer": ["diffusers", checkpoint.DIFFUSERS_CLASS],
        "transformer_2": ["diffusers", checkpoint.DIFFUSERS_CLASS],
    }
    absent = ["scheduler", "text_encoder", "tokenizer", "vae"]
    if kind == "i2v":
        absent += ["image_encoder", "image_processor"]
    return {**index, **{name: [None, None] for name in absent}}


def export(
    net: WanExperts,
    out: str | os.PathLike[str],
    *,
    format: Format = "diffusers",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = weights.DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write an A14B network: both experts as a repository of ``format`` (diffusers: ``transformer/``,
    ``transformer_2/`` and model_index.json with the boundary; native: ``high_noise_model/`` and
    ``low_noise_model/``), one expert as its checkpoint folder. Complete or not at all."""
    if format not in FOLDERS:
        raise ValueError(f"format must be 'diffusers' or 'native', got {format!r}")
    wan = layouts(model_type(net.arch))
    options: Mapping[str, Any] = {"format": format, "dtype": dtype, "max_shard_bytes": max_shard_bytes}
    if len(net.experts) == 1:
        return export_network(wan, net.expert(net.experts[0]), out, overwrite=overwrite, **options)
    with atomic.atomic_directory(out, overwrite=overwrite) as tmp:
        for expert in EXPERTS:
            export_network(wan, net.expert(expert), tmp / FOLDERS[format][expert], **options)
        if format == "diffusers":
            (tmp / MODEL_INDEX).write_text(json.dumps(diffusers_model_index(net), indent=2, sort_keys=True) + "\n")
    return Path(out)
