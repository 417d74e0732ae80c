"""The latent-shard format: what ``rcm synth`` writes and the ``latent_shards`` dataset reads.

Files
=====

A dataset directory holds safetensors *shards*, an ``index.json`` describing them and, optionally, the
embedding of a negative prompt::

    DIR/index.json                 the index (below); written last, atomically
    DIR/shard-000000.safetensors   samples 0 .. n0-1
    DIR/shard-000001.safetensors   ...
    DIR/negative.safetensors       optional: ``text`` (1, L, D) [+ ``text_mask`` (1, L)]
    DIR/synth.json                 written by ``rcm synth`` / ``rcm convert-data``: settings, checked on restart

Every shard holds the same tensors, each with the shard's sample count as the leading dimension:

=================  ==============  ===================================================================
key                shape           meaning
=================  ==============  ===================================================================
``latents``        (n, C, T, H, W) clean latents (the dataset's ``x0``), normalised as the network expects
``text``           (n, L, D)       text-encoder tokens, zero past each prompt's length (network key ``text``)
``text_mask``      (n, L)          optional; bool, true for real tokens
``prompt_index``   (n,)            optional; int64, the prompt's line in the prompt file (``rcm synth``)
``cond.NAME``      (n, ...)        optional; extra network condition ``NAME`` (e.g. ``cond.image``)
=================  ==============  ===================================================================

Captions, when stored, are the safetensors metadata entry ``captions``: a JSON list of n strings.

``index.json``::

    {
      "format": "rcm-latent-shards", "version": 1,
      "tensors": {"latents": {"dtype": "bfloat16", "shape": [16, 21, 60, 104]},
                  "text": {"dtype": "bfloat16", "shape": [512, 4096]}, ...},   # per sample
      "shards": [{"file": "shard-000000.safetensors", "count": 64, "bytes": 551234567,
                  "sha256": "…"}, ...],
      "captions": true,
      "negative": "negative.safetensors",      # or null
      "info": {...}                             # free-form provenance (teacher, sampler, steps, ...)
    }

``bytes`` and the safetensors header of every shard are checked when a dataset is opened (a truncated
file, a wrong dtype or shape, a missing key, a count that differs from the index are errors naming the
file and the key); ``sha256`` is checked when a shard is read if the dataset asks for it.

``rcm synth`` and ``rcm convert-data`` write the shards through
:class:`rcm_plugins.data.latent_shards_writer.LatentShardsWriter` (prompt ``i`` in shard ``i // shard_size``;
each shard whole or not at all), and the dataset reads them.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from rcm_registry.atomic import atomic_file, write_text_atomic
from rcm_registry.checksum import file_sha256
from rcm_registry.errors import UserError

FORMAT = "rcm-latent-shards"
VERSION = 1
INDEX_NAME = "index.json"
NEGATIVE_NAME = "negative.safetensors"
SETTINGS_NAME = "synth.json"
CAPTIONS_KEY = "captions"
REQUIRED_KEYS = ("latents", "text")

# torch dtype name <-> safetensors header code
_DTYPES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_CODES = {code: name for name, code in _DTYPES.items()}
#: safetensors refuses headers above 100 MB; anything larger is not a shard.
_MAX_HEADER = 100 * 1024 * 1024


class ShardError(UserError):
    """A latent-shard dataset that cannot be trusted: every line names the file and, where known, the key."""


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@attrs.frozen
class TensorSpec:
    """One tensor of every sample: dtype (torch name) and per-sample shape."""

    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=lambda s: tuple(int(v) for v in s))

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@attrs.frozen
class ShardEntry:
    file: str
    count: int
    bytes: int
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "count": self.count, "bytes": self.bytes}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


@attrs.define
class ShardIndex:
    """The parsed ``index.json`` of a dataset directory."""

    root: Path
    tensors: dict[str, TensorSpec]
    shards: list[ShardEntry]
    captions: bool = False
    negative: str | None = None
    info: dict[str, Any] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.tensors["latents"].shape

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tensors": {k: v.to_json() for k, v in self.tensors.items()},
            "shards": [s.to_json() for s in self.shards],
            "captions": self.captions,
            "negative": self.negative,
            "info": self.info,
        }

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> ShardIndex:
        """Parse and check ``root/index.json``; every structural problem in one :class:`ShardError`."""
        root = Path(root)
        path = root / INDEX_NAME
        if not root.is_dir():
            raise ShardError(f"{root}: no such dataset directory")
        if not path.is_file():
            raise ShardError(f"{path}: missing (a latent-shard dataset needs its index; `rcm synth` writes one)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: not readable JSON ({exc})") from None
        problems: list[str] = []

        def bad(key: str, text: str) -> None:
            problems.append(f"{path} [{key}]: {text}")

        if not isinstance(raw, dict):
            raise ShardError(f"{path}: expected a JSON object")
        if raw.get("format") != FORMAT:
            bad("format", f"expected {FORMAT!r}, got {raw.get('format')!r}")
        if raw.get("version") != VERSION:
            bad("version", f"this reader knows version {VERSION}, got {raw.get('version')!r}")
        tensors: dict[str, TensorSpec] = {}
        raw_tensors = raw.get("tensors")
        if not isinstance(raw_tensors, dict):
            bad("tensors", "expected an object of {key: {dtype, shape}}")
            raw_tensors = {}
        for key, spec in raw_tensors.items():
            try:
                if spec["dtype"] not in _DTYPES:
                    raise ValueError(f"unknown dtype {spec['dtype']!r}")
                tensors[key] = TensorSpec(spec["dtype"], spec["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                bad(f"tensors.{key}", f"expected {{dtype, shape}} ({exc})")
        for key in REQUIRED_KEYS:
            if raw_tensors and key not in raw_tensors:
                bad(f"tensors.{key}", "missing (every dataset has latents and text)")
        shards: list[ShardEntry] = []
        raw_shards = raw.get("shards")
        if not isinstance(raw_shards, list):
            bad("shards", "expected a list")
            raw_shards = []
        for i, entry in enumerate(raw_shards):
            try:
                shard = ShardEntry(
                    file=str(entry["file"]),
                    count=int(entry["count"]),
                    bytes=int(entry["bytes"]),
                    sha256=entry.get("sha256"),
                )
                if shard.count < 1 or "/" in shard.file or "\\" in shard.file:
                    raise ValueError("count must be >= 1 and file a plain name inside the directory")
                shards.append(shard)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                bad(f"shards[{i}]", f"expected {{file, count, bytes}} ({exc})")
        negative = raw.get("negative")
        if negative is not None and not isinstance(negative, str):
            bad("negative", "expected a file name or null")
        if problems:
            raise ShardError("\n".join(problems))
        return cls(
            root=root,
            tensors=tensors,
            shards=shards,
            captions=bool(raw.get("captions", False)),
            negative=negative,
            info=dict(raw.get("info") or {}),
        )

    def write(self) -> Path:
        """Write ``index.json`` atomically: one line per tensor and per shard, so it diffs and greps well."""
        data = self.to_json()
        lines = ["{"]
        for key in ("format", "version", "captions", "negative", "info"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(data[key], ensure_ascii=False)},")
        tensors = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in data["tensors"].items()]
        lines += ['  "tensors": {', ",\n".join(tensors), "  },"]
        shards = [f"    {json.dumps(e)}" for e in data["shards"]]
        lines += ['  "shards": [', ",\n".join(shards), "  ]", "}"]
        path = self.root / INDEX_NAME
        write_text_atomic(path, "\n".join(line for line in lines if line) + "\n")
        return path


# -- files ------------------------------------------------------------------------------------------


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The tensor table and metadata of a safetensors file, read without its data.

    Checks that the file is as long as its header says, so a truncated shard is found here.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ShardError(f"{path}: truncated ({size} bytes; not even a safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ShardError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file {size})")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ShardError(f"{path}: cannot read ({exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ShardError(f"{path}: corrupt safetensors header (not an object)")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for key, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ShardError(f"{path} [{key}]: corrupt safetensors header entry") from None
    if 8 + n + end != size:
        state = "truncated" if 8 + n + end > size else "longer than its header says"
        raise ShardError(f"{path}: {state} ({size} bytes on disk, header describes {8 + n + end})")
    return header, metadata


def check_tensors(
    path: Path, header: Mapping[str, Mapping[str, Any]], specs: Mapping[str, TensorSpec], count: int
) -> list[str]:
    """Problems of one file's tensors against the index: missing, unexpected, wrong dtype or shape."""
    problems: list[str] = []
    for key, spec in specs.items():
        entry = header.get(key)
        if entry is None:
            problems.append(f"{path} [{key}]: missing")
            continue
        dtype = _CODES.get(str(entry.get("dtype")), str(entry.get("dtype")))
        if dtype != spec.dtype:
            problems.append(f"{path} [{key}]: dtype {dtype}, the index says {spec.dtype}")
        shape = tuple(entry.get("shape", ()))
        want = (count, *spec.shape)
        if shape != want:
            if shape[:1] != want[:1] and shape[1:] == want[1:]:
                problems.append(f"{path} [{key}]: {shape[0] if shape else 0} samples, the index says {count}")
            else:
                problems.append(f"{path} [{key}]: shape {list(shape)}, expected {list(want)}")
    for key in header:
        if key not in specs:
            problems.append(f"{path} [{key}]: not in the index's tensors ({', '.join(specs)})")
    return problems


def check_shard(index: ShardIndex, entry: ShardEntry) -> list[str]:
    """Problems of one shard against the index (size, header, keys, dtypes, shapes, count, captions)."""
    path = index.root / entry.file
    if not path.is_file():
        return [f"{path}: missing (listed in {index.root / INDEX_NAME})"]
    size = path.stat().st_size
    if size != entry.bytes:
        what = "truncated" if size < entry.bytes else "changed"
        return [f"{path}: {what} ({size} bytes on disk, the index says {entry.bytes})"]
    try:
        header, metadata = read_header(path)
    except ShardError as exc:
        return [str(exc)]
    problems = check_tensors(path, header, index.tensors, entry.count)
    if index.captions:
        try:
            captions = json.loads(metadata.get(CAPTIONS_KEY, "null"))
        except ValueError:
            captions = None
        if not isinstance(captions, list) or len(captions) != entry.count:
            found = f"{len(captions)}" if isinstance(captions, list) else "none"
            problems.append(f"{path} [{CAPTIONS_KEY}]: {found} captions, the index says {entry.count} samples")
    return problems


def check_negative(index: ShardIndex) -> list[str]:
    if index.negative is None:
        return []
    path = index.root / index.negative
    if not path.is_file():
        return [f"{path}: missing (named by {index.root / INDEX_NAME} [negative])"]
    try:
        header, _ = read_header(path)
    except ShardError as exc:
        return [str(exc)]
    specs = {k: index.tensors[k] for k in ("text", "text_mask") if k in index.tensors and k in header}
    if "text" not in header:
        return [f"{path} [text]: missing"]
    return check_tensors(path, header, specs, 1)


def write_shard(path: Path, tensors: Mapping[str, Tensor], captions: Sequence[str] | None) -> ShardEntry:
    """Write one shard under a temporary name, fsync it, rename it into place; return its index entry."""
    from safetensors.torch import save_file

    metadata = {"format": FORMAT}
    if captions is not None:
        metadata[CAPTIONS_KEY] = json.dumps(list(captions), ensure_ascii=False)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        entry = ShardEntry(
            file=path.name,
            count=int(next(iter(tensors.values())).shape[0]),
            bytes=tmp.stat().st_size,
            sha256=file_sha256(tmp),
        )
    return entry


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.safetensors"


def header_specs(header: Mapping[str, Mapping[str, Any]]) -> dict[str, TensorSpec]:
    """The per-sample tensor specs of a shard's safetensors header (what its index lists)."""
    return {key: TensorSpec(_CODES[str(e["dtype"])], list(e["shape"])[1:]) for key, e in sorted(header.items())}
