"""Checkpoint files, independent of any network: find, read, check strictly, and write atomically.

Network plugins keep their own key mappings and config translation; this module only knows file formats:

* safetensors: one file, or shards listed by a ``*.safetensors.index.json`` (``{"weight_map": {key: file}}``);
* PyTorch pickles (``.pth``, ``.pt``, ``.bin``), read with ``torch.load(weights_only=True)`` so that a
  checkpoint cannot run code;
* diffusers model directories: a ``config.json`` with ``_class_name`` next to the weights;
* ``torch.distributed.checkpoint`` (DCP) directories, as the rCM release's trainer writes them: a
  ``.metadata`` file and ``*.distcp`` shards, read in one process on the CPU, tensors only (see
  :func:`read_dcp_tensors`).

A pickle that would call code is refused before anything in it runs (:class:`UnsafeCheckpointError`).

Every problem is a :class:`rcm_registry.errors.CheckpointError` naming the file; strict loading is
:mod:`rcm_registry.state_dicts`'s.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rcm_registry import atomic
from rcm_registry.errors import CheckpointError, UnsafeCheckpointError

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
    obj = load_torch_file(file, device=device)
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{file}: expected a flat dict of tensors, found {top}")
    return dict(obj)


#: How torch's weights_only unpickler (and ours for DCP metadata) names the global it refused.
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def load_torch_file(file: Path, *, device: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """What ``torch.load(file, weights_only=True)`` returns (tensors, containers, numbers, strings).

    A pickle that names code (``os.system``, a class of its own) is an :class:`UnsafeCheckpointError`
    naming what it calls, a truncated or foreign file a :class:`CheckpointError`: torch's unpickler stops
    at the first forbidden global, before calling anything. ``mmap``: map the tensor data instead of
    reading it (cheap: only the pickle itself is read, so a check can open a 30 GB file).
    """
    try:
        try:
            return torch.load(file, map_location=device, weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "mmap" in str(exc)):
                raise
            # The legacy (pre-zip) torch.save format cannot be mapped; it is read whole instead.
            return torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f"calls {found.group(1)}" if found else "is beyond what weights_only allows"
        raise UnsafeCheckpointError(
            f"{file}: refused: its pickle {what}, and weights are read only with torch.load(weights_only=True) "
            "(re-save it as a plain dict of tensors, or as safetensors, from code you trust)"
        ) from None
    except Exception as exc:  # zip/pickle damage comes in many types; all mean "not a whole torch.save file"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{file}: not a complete torch.save file (truncated or damaged? {detail})") from None


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


# -- torch.distributed.checkpoint directories -----------------------------------------------------------

#: The file that makes a directory a DCP checkpoint.
DCP_METADATA = ".metadata"
#: In a trainer checkpoint folder (the rCM release's ``checkpoints/iter_N/``) the networks' DCP directory;
#: its sibling folders (``optim_*``, ``scheduler_*``, ``trainer``) hold training state, not weights.
DCP_MODEL_FOLDER = "model"


def dcp_directory(path: PathLike) -> Path | None:
    """The DCP directory ``path`` names: itself when it holds ``.metadata``, or its ``model`` folder (a
    trainer checkpoint folder); None otherwise."""
    p = Path(path)
    for candidate in (p, p / DCP_MODEL_FOLDER):
        if (candidate / DCP_METADATA).is_file():
            return candidate
    return None


#: The globals a DCP ``.metadata`` pickle names (torch dtypes besides): module -> names.
_DCP_METADATA_GLOBALS: Mapping[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo", "_StoragePrefix"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}),
    "collections": frozenset({"OrderedDict"}),
}  # fmt: skip


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file, which is a plain pickle (torch's reader uses ``pickle.load``): only
    DCP's own metadata classes, torch dtypes, layouts, sizes and paths may be named, anything else is refused
    before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def _dcp_metadata(directory: Path) -> Any:
    file = directory / DCP_METADATA
    try:
        with file.open("rb") as stream:
            return _DcpMetadataUnpickler(stream).load()
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        if found:
            raise UnsafeCheckpointError(
                f"{file}: refused: its pickle calls {found.group(1)}, which a DCP checkpoint's metadata never names"
            ) from None
        raise CheckpointError(f"{file}: not a readable DCP metadata file ({exc})") from None
    except Exception as exc:  # EOFError, AttributeError ... from a damaged file
        raise CheckpointError(f"{file}: not a readable DCP metadata file ({type(exc).__name__}: {exc})") from None


def dcp_entries(directory: PathLike) -> dict[str, tuple[int, ...] | None]:
    """Every entry of a DCP directory by key: a tensor's shape, or None for an entry stored as pickled
    bytes (``_extra_state``, counters: never unpickled here)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = _dcp_metadata(Path(directory)).state_dict_metadata
    return {k: tuple(m.size) if isinstance(m, TensorStorageMetadata) else None for k, m in entries.items()}


def read_dcp_tensors(directory: PathLike, keys: Iterable[str]) -> dict[str, Tensor]:
    """The tensors ``keys`` of a DCP directory, whole, on the CPU, in one process (no process group).

    Only tensor entries can be read: DCP stores other values as pickles its reader would load with
    ``weights_only=False``, so those are never touched, and the metadata is read by a restricted unpickler.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    d = Path(directory)
    metadata = _dcp_metadata(d)
    entries = metadata.state_dict_metadata
    template: dict[str, Any] = {}
    for key in keys:
        entry = entries.get(key)
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{d}: no tensor {key!r} in this DCP checkpoint")
        template[key] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)

    class Reader(dcp.FileSystemReader):  # the same reader, with the metadata read as above
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return metadata

    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(template, storage_reader=Reader(str(d)), no_dist=True)
    except (Exception, dcp.api.CheckpointException) as exc:  # a missing or short .distcp shard
        raise CheckpointError(f"{d}: cannot read the DCP checkpoint's tensors ({type(exc).__name__}: {exc})") from None
    return template


# -- the rCM release's layout -----------------------------------------------------------------------------

#: Prefixes of the networks in the rCM release's trainer state dict (and its published ``.pt`` files):
#: the student, the student's EMA, the fake score (critic). :mod:`rcm_plugins.common.release` reads them.
RELEASE_PREFIXES = ("net.", "net_ema.", "net_fake_score.")
#: The part of a single-file trainer checkpoint (``{"model": ..., "optimizer": ..., ...}``) holding the networks.
RELEASE_MODEL_PART = "model"
#: Its other top-level parts: training state, not weights.
RELEASE_TRAINING_STATE = ("optimizer", "optim", "scheduler", "grad_scaler", "trainer", "iteration")


def release_model_part(obj: Any, source: str) -> Mapping[str, Any]:
    """The networks' flat state dict of a release ``.pt``: the file itself, or its ``model`` part when it is a
    trainer checkpoint (the training state beside it is left alone; a top-level entry that is neither is an
    error naming it)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    part = obj.get(RELEASE_MODEL_PART)
    if isinstance(part, Mapping):
        unknown = sorted(str(k) for k in obj if k != RELEASE_MODEL_PART and k not in RELEASE_TRAINING_STATE)
        if unknown:
            raise CheckpointError(
                f"{source}: a trainer checkpoint with entries that are neither its model nor training state "
                f"({', '.join(RELEASE_TRAINING_STATE)}): {', '.join(unknown)}"
            )
        return part
    return obj


def is_rcm_release(path: PathLike) -> bool:
    """Whether ``path`` is in the rCM release's layout: a DCP directory (or a trainer checkpoint folder
    holding one), or a ``.pt``/``.pth`` whose keys all carry one of :data:`RELEASE_PREFIXES`.

    Reading a ``.pt`` to tell maps its tensors without reading them; an unsafe pickle is refused here
    (:class:`UnsafeCheckpointError`), as any read of it would be.
    """
    p = Path(path)
    if p.is_dir():
        return dcp_directory(p) is not None
    if not (p.is_file() and p.suffix in (".pt", ".pth")):
        return False
    obj = load_torch_file(p, mmap=True)
    if not isinstance(obj, Mapping):
        return False
    part = obj.get(RELEASE_MODEL_PART)
    keys = list(part if isinstance(part, Mapping) else obj)
    return bool(keys) and all(isinstance(k, str) and k.startswith(RELEASE_PREFIXES) for k in keys)


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


def write_torch_file(
    state_dict: Mapping[str, Tensor], out: PathLike, *, dtype: torch.dtype | None = None, overwrite: bool = False
) -> Path:
    """``torch.save`` a flat dict of tensors as ``out`` (a ``.pt``/``.pth`` file), floating tensors cast to
    ``dtype``; the file appears complete or not at all."""
    path = Path(out)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite to replace it)")
    tensors = _storable(state_dict, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as tmp:
        torch.save(tensors, tmp)
    return path


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
