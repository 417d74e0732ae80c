"""Checkpoint files, independent of any network: find, read, check strictly, and write atomically.

Network plugins keep their own key mappings and config translation; this module only knows file formats:

* safetensors: one file, or shards listed by a ``*.safetensors.index.json`` (``{"weight_map": {key: file}}``);
* PyTorch pickles (``.pth``, ``.pt``, ``.bin``), read with ``torch.load(weights_only=True)`` so that a
  checkpoint cannot run code;
* diffusers model directories: a ``config.json`` with ``_class_name`` next to the weights.

Every problem is a :class:`rcm_registry.errors.CheckpointError` naming the file; strict loading is
:mod:`rcm_registry.state_dicts`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rcm_registry import atomic
from rcm_registry.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
CONFIG_NAME = "config.json"
#: Shard size used when writing, as in diffusers/transformers (bytes).
DEFAULT_MAX_SHARD_BYTES = 10 * 1024**3

PathLike = str | os.PathLike[str]


def weight_files(path: PathLike) -> list[Path]:
    """The files holding a checkpoint's tensors, in shard order.

    ``path`` is a weights file, an index file, or a directory holding exactly one of: an index, a
    ``.safetensors`` file, a PyTorch pickle (an index wins over loose shards, safetensors over pickles).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name.endswith(INDEX_SUFFIX):
            return _index_shards(p)
        if p.suffix == ".safetensors" or p.suffix in TORCH_SUFFIXES:
            return [p]
        kinds = f".safetensors, {', '.join(TORCH_SUFFIXES)} or *{INDEX_SUFFIX}"
        raise CheckpointError(f"{p}: not a weights file (expected {kinds})")
    indexes = sorted(p.glob("*" + INDEX_SUFFIX))
    if len(indexes) > 1:
        raise CheckpointError(f"{p}: several shard indexes, name one: {', '.join(i.name for i in indexes)}")
    if indexes:
        return _index_shards(indexes[0])
    for pattern in (["*.safetensors"], [f"*{s}" for s in TORCH_SUFFIXES]):
        found = sorted(f for pat in pattern for f in p.glob(pat) if f.is_file())
        if len(found) > 1:
            raise CheckpointError(
                f"{p}: several weight files and no *{INDEX_SUFFIX} to say how they fit together: "
                f"{', '.join(f.name for f in found)}; name one file"
            )
        if found:
            return found
    raise CheckpointError(f"{p}: no weights found (.safetensors, *{INDEX_SUFFIX}, {', '.join(TORCH_SUFFIXES)})")


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a readable shard index ({exc})") from exc
    shards = [index.parent / n for n in names]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index}: {len(missing)} shard(s) listed but not found: {', '.join(missing)}")
    return shards


def describe(path: PathLike) -> str:
    """How errors name a checkpoint: the path, plus the shard count when it is sharded."""
    p = Path(path)
    try:
        files = weight_files(p)
    except CheckpointError:
        return str(p)
    return f"{p} ({len(files)} shards)" if len(files) > 1 else str(files[0])


def read_state_dict(path: PathLike, *, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """All tensors of a checkpoint (file, index or directory) as one flat dict."""
    out: dict[str, Tensor] = {}
    for file in weight_files(path):
        part = _read_file(file, device)
        clash = out.keys() & part.keys()
        if clash:
            raise CheckpointError(f"{file}: keys also found in an earlier shard: {', '.join(sorted(clash))}")
        out.update(part)
    return out


def _read_file(file: Path, device: str | torch.device) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file), device=str(device))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not a plain state dict"
        raise CheckpointError(f"{file}: could not be read with torch.load(weights_only=True) ({exc})") from exc
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{file}: expected a flat dict of tensors, found {top}")
    return dict(obj)


def read_config(path: PathLike) -> dict[str, Any] | None:
    """``config.json`` of a checkpoint directory (or the one next to a weights file), or None."""
    p = Path(path)
    return read_json_object(p / CONFIG_NAME if p.is_dir() else p.parent / CONFIG_NAME)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a checkpoint's config.json, a repository's model_index.json), or None when
    there is no such file; anything else is a :class:`CheckpointError` naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def diffusers_class_name(path: PathLike) -> str | None:
    """The ``_class_name`` of a diffusers-style directory's config.json (None if there is none)."""
    config = read_config(path)
    name = config.get("_class_name") if config else None
    return name if isinstance(name, str) else None


# -- writing ------------------------------------------------------------------------------------------


def _storable(state_dict: Mapping[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses aliasing)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in state_dict.items():
        t = v.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def write_safetensors(
    state_dict: Mapping[str, Tensor],
    directory: PathLike,
    *,
    basename: str = "diffusion_pytorch_model",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write tensors into an existing ``directory`` as ``{basename}.safetensors``, or as shards
    ``{basename}-00001-of-0000N.safetensors`` plus ``{basename}.safetensors.index.json`` when they exceed
    ``max_shard_bytes`` (the diffusers/transformers naming). Use inside :func:`rcm_registry.atomic.atomic_directory`.
    """
    tensors = _storable(state_dict, dtype)
    groups: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][k] = t
        size += nbytes
    directory = Path(directory)
    meta = {"format": "pt", **(metadata or {})}
    if len(groups) == 1:
        path = directory / f"{basename}.safetensors"
        save_file(groups[0], str(path), metadata=meta)
        return [path]
    paths = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        path = directory / f"{basename}-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(path), metadata=meta)
        weight_map.update(dict.fromkeys(group, path.name))
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{basename}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths


def write_config(config: Mapping[str, Any], directory: PathLike) -> Path:
    """Write ``config.json`` into ``directory``."""
    path = Path(directory) / CONFIG_NAME
    path.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    return path


def write_checkpoint_directory(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    out: PathLike,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json`` and the tensors (sharded above ``max_shard_bytes``) as a model directory that
    appears complete or not at all (see :func:`rcm_registry.atomic.atomic_directory`). Returns ``out``."""
    with atomic.atomic_directory(out, overwrite=overwrite) as tmp:
        write_safetensors(state_dict, tmp, max_shard_bytes=max_shard_bytes, dtype=dtype)
        write_config(config, tmp)
    return Path(out)
