"""Teacher-synthesised training data: the latent-shard format and ``rcm synth``.

The format
==========

A dataset directory holds safetensors *shards*, an ``index.json`` describing them and, optionally, the
embedding of a negative prompt::

    DIR/index.json                 the index (below); written last, atomically
    DIR/shard-000000.safetensors   samples 0 .. n0-1
    DIR/shard-000001.safetensors   ...
    DIR/negative.safetensors       optional: ``text`` (1, L, D) [+ ``text_mask`` (1, L)]
    DIR/synth.json                 written by ``rcm synth`` only: its settings, checked on restart

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

``rcm synth``
=============

:func:`synthesise` samples the recipe's teacher for every prompt and writes the shards. Prompt ``i``
goes to shard ``i // shard_size`` and its noise comes from a generator seeded with ``(seed, i)``, so the
output does not depend on how often the command was interrupted: shards are written under a temporary
name and renamed, and a restart skips every shard already present.

Conditions besides the text. A network conditioned on more than the prompt (Wan2.1 I2V: ``image``, the
CLIP image tokens, and ``image_latent``, the mask and first-frame latents; Cosmos-Predict2 Video2World:
``condition_latents`` and ``condition_mask``) says so through its config's
``condition_shapes(latent_shape)``. No codec computes these, so they come with the prompts: ``cond.NAME``
tensors with one row per prompt, in a ``--prompts`` ``.safetensors`` file or a separate ``--conditions``
``.safetensors`` file. ``rcm synth`` checks that every condition the network needs is there with its
shape, gives them to the teacher (both CFG branches, as the ``latent_shards`` dataset does in training)
and stores them in the shards as ``cond.NAME``, rounded to the store dtype (the teacher sees the stored
values). A network whose config has no ``condition_shapes`` gets whatever conditions are given.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from rcm_registry.errors import UserError

FORMAT = "rcm-latent-shards"
VERSION = 1
INDEX_NAME = "index.json"
NEGATIVE_NAME = "negative.safetensors"
SETTINGS_NAME = "synth.json"
CAPTIONS_KEY = "captions"
COND_PREFIX = "cond."
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _publish(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the permissions of a normally created file, rename it to ``path``."""
    # safetensors creates files readable by the owner only; datasets are shared, so follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    _fsync(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    _publish(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    entry = ShardEntry(
        file=path.name,
        count=int(next(iter(tensors.values())).shape[0]),
        bytes=tmp.stat().st_size,
        sha256=file_sha256(tmp),
    )
    _publish(tmp, path)
    return entry


# -- prompts ------------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """Undo HTML escapes and collapse whitespace, as Wan's and Cosmos' pipelines do before tokenising
    (``ftfy`` repairs mojibake first when it is installed)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


@attrs.define
class PromptSet:
    """Prompts to synthesise: captions (a text file or JSON lines), or precomputed embeddings."""

    source: Path
    sha256: str
    captions: list[str] | None = None
    #: (N, L, D) text embeddings and (N, L) masks when the prompts come as a safetensors file.
    text: Tensor | None = None
    text_mask: Tensor | None = None
    negative_text: Tensor | None = None
    negative_mask: Tensor | None = None
    #: Per-prompt network conditions besides the text, by condition name (``cond.NAME`` in the files), (N, ...).
    conditions: dict[str, Tensor] = attrs.field(factory=dict)
    #: The ``--conditions`` file they came from, and its sha256 (None: none, or in the prompts file).
    conditions_source: Path | None = None
    conditions_sha256: str | None = None

    def __len__(self) -> int:
        if self.captions is not None:
            return len(self.captions)
        assert self.text is not None
        return int(self.text.shape[0])


def read_prompts(path: Path) -> PromptSet:
    """``.txt``: one prompt per non-empty line; ``.jsonl``: one object with ``prompt`` per line;
    ``.safetensors``: ``text`` (N, L, D), optional ``text_mask`` (N, L), ``negative_text`` (1, L, D),
    ``negative_text_mask`` (1, L), ``cond.NAME`` (N, ...) network conditions besides the text, and
    optional metadata ``captions`` (a JSON list)."""
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    digest = file_sha256(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            _, metadata = read_header(path)
        except ShardError:
            raise
        except Exception as exc:
            raise UserError(f"--prompts {path}: not a readable safetensors file ({exc})") from None
        if "text" not in tensors or tensors["text"].ndim != 3:
            raise UserError(f"--prompts {path} [text]: expected (N, L, D) text embeddings")
        captions = json.loads(metadata[CAPTIONS_KEY]) if CAPTIONS_KEY in metadata else None
        text = tensors["text"]
        if captions is not None and len(captions) != text.shape[0]:
            raise UserError(f"--prompts {path} [captions]: {len(captions)} captions for {text.shape[0]} embeddings")
        mask = tensors.get("text_mask")
        if mask is not None and tuple(mask.shape) != tuple(text.shape[:2]):
            raise UserError(f"--prompts {path} [text_mask]: shape {list(mask.shape)}, expected {list(text.shape[:2])}")
        negative = tensors.get("negative_text")
        if negative is not None and (
            negative.ndim != 3 or negative.shape[0] != 1 or negative.shape[2] != text.shape[2]
        ):
            raise UserError(f"--prompts {path} [negative_text]: expected (1, L, {text.shape[2]})")
        known = {"text", "text_mask", "negative_text", "negative_text_mask"}
        unknown = [k for k in tensors if k not in known and not k.startswith(COND_PREFIX)]
        if unknown:
            raise UserError(
                f"--prompts {path}: unexpected tensors {', '.join(unknown)} (conditions are named {COND_PREFIX}NAME)"
            )
        prompts = PromptSet(source=path, sha256=digest, captions=captions, text=text, text_mask=mask)
        prompts.conditions = _conditions_of(f"--prompts {path}", tensors, int(text.shape[0]))
        prompts.negative_text = negative
        prompts.negative_mask = tensors.get("negative_text_mask")
        if prompts.text_mask is None:
            prompts.text_mask = text.abs().amax(-1) > 0
        return prompts
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc})") from None
    captions: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                captions.append(str(item["prompt"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"--prompts {path}:{number}: expected a JSON object with a 'prompt'") from None
    else:
        captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise UserError(f"--prompts {path}: no prompts")
    return PromptSet(source=path, sha256=digest, captions=captions)


def _conditions_of(where: str, tensors: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
    """The ``cond.NAME`` tensors of a file by NAME, each checked to hold one row per prompt."""
    out: dict[str, Tensor] = {}
    problems = []
    for key, value in tensors.items():
        if not key.startswith(COND_PREFIX):
            continue
        name = key[len(COND_PREFIX) :]
        if not name or name == "text":
            problems.append(f"{where} [{key}]: not a condition name (the text comes from the prompts)")
        elif value.ndim < 1 or value.shape[0] != n:
            problems.append(f"{where} [{key}]: shape {list(value.shape)}, expected one row per prompt ({n}, ...)")
        else:
            out[name] = value
    if problems:
        raise UserError("\n".join(problems))
    return out


def load_conditions(path: Path, n: int) -> dict[str, Tensor]:
    """The ``cond.NAME`` tensors of a ``--conditions`` file by NAME, each holding ``n`` rows (one per prompt)."""
    if not path.is_file():
        raise UserError(f"--conditions {path}: no such file")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise UserError(f"--conditions {path}: not a readable safetensors file ({exc})") from None
    other = [k for k in tensors if not k.startswith(COND_PREFIX)]
    if other or not tensors:
        found = f"found {', '.join(other)}" if other else "found none"
        raise UserError(f"--conditions {path}: expected {COND_PREFIX}NAME tensors, one row per prompt ({found})")
    return _conditions_of(f"--conditions {path}", tensors, n)


def read_conditions(path: Path, prompts: PromptSet) -> None:
    """Add the ``cond.NAME`` tensors of ``path`` (``--conditions``; one row per prompt) to ``prompts``."""
    conditions = load_conditions(path, len(prompts))
    both = sorted(set(conditions) & set(prompts.conditions))
    if both:
        raise UserError(f"--conditions {path}: {', '.join(both)} also given in --prompts {prompts.source}")
    prompts.conditions.update(conditions)
    prompts.conditions_source = path
    prompts.conditions_sha256 = file_sha256(path)


def network_conditions(spec: Any, latent_shape: Sequence[int]) -> dict[str, tuple[int | None, ...]] | None:
    """Per-sample shapes of the conditions besides ``text`` that a network needs (None in a size: any), from
    its config's ``condition_shapes``; None when the config does not say."""
    method = getattr(spec.config, "condition_shapes", None)
    if method is None:
        return None
    return {key: tuple(shape) for key, shape in method(tuple(latent_shape)).items()}


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if v is None else str(v) for v in shape) + ")"


#: Where ``rcm synth`` takes the conditions besides the text from.
SYNTH_CONDITIONS = (
    "rcm synth",
    "Give them as tensors with one row per prompt, in prompt order, in --conditions FILE.safetensors "
    "(or in a --prompts .safetensors file)",
)


def check_conditions(
    role: str,
    spec: Any,
    needs: Mapping[str, Sequence[int | None]] | None,
    given: Mapping[str, Tensor],
    command: tuple[str, str] = SYNTH_CONDITIONS,
) -> None:
    """A :class:`UserError` naming every condition the network needs but is not given, or gets but does not
    take, and every per-sample shape that does not fit. ``command`` is (name, how to give them) for the
    message."""
    who = f"networks.{role} ({spec.name})"
    name, how = command
    problems = []
    if needs is not None:
        missing = [k for k in needs if k not in given]
        if missing:
            wanted = ", ".join(f"{COND_PREFIX}{k} {_shape_text(needs[k])}" for k in missing)
            problems.append(
                f"{who} is conditioned on more than the text: {name} needs {wanted} per prompt, and no codec "
                f"computes them. {how}"
            )
        for key in given:
            if key not in needs:
                takes = f" (it takes: {', '.join(needs)})" if needs else " (it takes the text only)"
                problems.append(f"{COND_PREFIX}{key}: {who} takes no condition {key!r}{takes}")
    for key, value in given.items():
        want = needs.get(key) if needs is not None else None
        got = tuple(value.shape[1:])
        if want is not None and (
            len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True))
        ):
            problems.append(
                f"{COND_PREFIX}{key}: {list(got)} per prompt, {who} takes {_shape_text(want)} at this --shape"
            )
    if problems:
        raise UserError("\n".join(problems))


# -- teacher sampling ---------------------------------------------------------------------------------


def time_grid(steps: int, shift: float, sigma_max: float | None = None) -> list[float]:
    """TrigFlow times of a teacher ODE solve, decreasing from noise to 0.

    Uniform in rectified-flow time u from 1 to 0, shifted Wan-style (``u' = shift·u/(1 + (shift − 1)·u)``),
    mapped to TrigFlow by ``t = atan2(u', 1 − u')``. With ``sigma_max`` the times are capped at
    ``atan(sigma_max)`` (for teachers, like EDM ones, that are undefined at pure noise).
    """
    times: list[float] = []
    cap = math.atan(sigma_max) if sigma_max is not None else math.pi / 2
    for i in range(steps + 1):
        u = 1.0 - i / steps
        u = shift * u / (1.0 + (shift - 1.0) * u)
        t = min(math.atan2(u, 1.0 - u), cap)
        if not times or t < times[-1]:  # capping can repeat the first time: drop empty steps
            times.append(t)
    return times


def _half_log_snr(t: float) -> float:
    """λ = log(α/σ) = log(cos t / sin t) of TrigFlow time t (increases towards the data)."""
    return math.log(math.cos(t) / math.sin(t))


def _unipc_rhos(h: float, rks: Sequence[float]) -> list[float]:
    """UniPC coefficients (B(h) = e^{−h} − 1, data prediction) for the differences at ratios ``rks``.

    They solve ``Σ_k ρ_k r_k^(j−1) = j!·φ_{j+1}(−h)·(−h)/B(h)``, j = 1..len(rks): the conditions under which
    the update matches the Taylor expansion of the exact solution to order len(rks) + 1.
    """
    hh = -h
    h_phi = math.expm1(hh)
    b_h = h_phi
    h_phi_k = h_phi / hh - 1.0
    factorial = 1
    rhs = []
    for j in range(1, len(rks) + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    matrix = torch.tensor([[r ** (j - 1) for r in rks] for j in range(1, len(rks) + 1)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(rhs, dtype=torch.float64)).tolist()


class TeacherSolver:
    """Solves the teacher's probability-flow ODE in TrigFlow with classifier-free guidance.

    ``denoise(x, t) -> x0`` is the guided teacher (see :class:`rcm_registry.protocols.Teacher`). Both
    solvers do not depend on how the state is scaled, so on a rectified-flow teacher (whose state is
    TrigFlow's divided by ``cos t + sin t``) they are the solvers of Wan's and Cosmos' pipelines.

    * ``euler``: ``x ← cos t'·x̂0 + sin t'·ε̂`` with ``ε̂ = (x − cos t·x̂0)/sin t``: the flow-matching
      Euler step (DDIM), first order.
    * ``unipc``: UniPC (Zhao et al., 2023, arXiv 2302.04867) in its B(h) = e^{−h} − 1 form with data
      prediction, as Wan2.1 samples: a second-order multistep predictor and the UniC corrector, which
      reuses the evaluation at the new point, so the cost stays one teacher call per step. With
      α = cos t, σ = sin t, λ = log(α/σ) and h = λ' − λ, the first-order part is
      ``x' = (σ'/σ)·x + α'·(1 − e^{−h})·x̂0``. The step to t = 0 returns the last x̂0.
    """

    KINDS: tuple[str, ...] = ("euler", "unipc")

    def __init__(self, kind: str, times: Sequence[float]) -> None:
        if kind not in self.KINDS:
            raise UserError(f"--sampler {kind!r}: choose one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.times = list(times)

    @property
    def calls(self) -> int:
        """Teacher evaluations (each with CFG) per sample."""
        return len(self.times) - 1

    def __call__(
        self, denoise: Callable[[Tensor, float], Tensor], x: Tensor, step: Callable[[], None] | None = None
    ) -> Tensor:
        solve = self._euler if self.kind == "euler" else self._unipc
        return solve(denoise, x.to(torch.float64), step or (lambda: None))

    def _euler(self, denoise: Callable[[Tensor, float], Tensor], x: Tensor, step: Callable[[], None]) -> Tensor:
        for t, t_next in zip(self.times[:-1], self.times[1:], strict=True):
            x0 = denoise(x, t).to(torch.float64)
            if t_next <= 0.0:
                x = x0
            else:
                eps = (x - math.cos(t) * x0) / math.sin(t)
                x = math.cos(t_next) * x0 + math.sin(t_next) * eps
            step()
        return x

    def _unipc(self, denoise: Callable[[Tensor, float], Tensor], x: Tensor, step: Callable[[], None]) -> Tensor:
        times = self.times
        # The last predictor step, kept for the corrector: (x before it, its t, its x̂0, its scaled
        # differences D_k and their ratios r_k).
        last: tuple[Tensor, float, Tensor, list[Tensor], list[float]] | None = None
        earlier: tuple[float, Tensor] | None = None  # (λ, x̂0) of the point before the last
        for i in range(len(times) - 1):
            t, t_next = times[i], times[i + 1]
            m = denoise(x, t).to(torch.float64)
            if last is not None:
                x = self._corrected(last, t, m)
            if t_next <= 0.0:
                x = m
            else:
                lam, lam_next = _half_log_snr(t), _half_log_snr(t_next)
                h = lam_next - lam
                diffs: list[Tensor] = []
                ratios: list[float] = []
                if earlier is not None:  # second order from the previous point
                    r = (earlier[0] - lam) / h
                    ratios.append(r)
                    diffs.append((earlier[1] - m) / r)
                last = (x, t, m, diffs, ratios)
                x = self._first_order(x, t, t_next, m)
                if diffs:
                    # UniPC's order-2 predictor weight is 1/2 (its B(h) form), not the solved coefficient.
                    x = x - math.cos(t_next) * math.expm1(-h) * 0.5 * diffs[0]
                earlier = (lam, m)
            step()
        return x

    @staticmethod
    def _first_order(x: Tensor, t: float, t_next: float, m: Tensor) -> Tensor:
        h = _half_log_snr(t_next) - _half_log_snr(t)
        return (math.sin(t_next) / math.sin(t)) * x - math.cos(t_next) * math.expm1(-h) * m

    @classmethod
    def _corrected(cls, last: tuple[Tensor, float, Tensor, list[Tensor], list[float]], t: float, m: Tensor) -> Tensor:
        """UniC: redo the last step from its start with the model output at its end included."""
        x_prev, t_prev, m_prev, diffs, ratios = last
        h = _half_log_snr(t) - _half_log_snr(t_prev)
        rhos = [0.5] if not ratios else _unipc_rhos(h, [*ratios, 1.0])
        correction = sum((rho * d for rho, d in zip(rhos[:-1], diffs, strict=True)), torch.zeros_like(m))
        correction = correction + rhos[-1] * (m - m_prev)
        return cls._first_order(x_prev, t_prev, t, m_prev) - math.cos(t) * math.expm1(-h) * correction


# -- the command ------------------------------------------------------------------------------------


@attrs.frozen
class SynthSettings:
    """How ``rcm synth`` samples the teacher; all of it is recorded in ``synth.json`` and must match on restart."""

    #: Latent shape of one sample (C, T, H, W).
    shape: tuple[int, ...] = attrs.field(converter=lambda s: tuple(int(v) for v in s))
    #: ``euler`` or ``unipc`` (see :class:`TeacherSolver`).
    sampler: str = "euler"
    steps: int = 50
    #: Wan-style time shift of the ODE grid (Wan2.1 uses 3 at 480p, 5 at 720p).
    shift: float = 5.0
    #: CFG scale; None: the recipe's ``teacher_wrapper.guidance``.
    guidance: float | None = None
    negative_prompt: str = ""
    shard_size: int = 64
    batch_size: int = 1
    seed: int = 0
    #: Cap the first time at atan(sigma_max) (EDM-style teachers); None starts at pure noise.
    sigma_max: float | None = None
    #: dtype the latents and embeddings are stored in.
    store_dtype: str = "bfloat16"
    #: ``fp32``, or ``bf16`` autocast around the teacher as in training; None: the recipe's ``run.precision``.
    precision: str | None = None

    def check(self) -> None:
        problems = []
        if len(self.shape) != 4 or min(self.shape) < 1:
            problems.append(f"--shape must be four positive sizes C,T,H,W, got {list(self.shape)}")
        for name in ("steps", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.shift <= 0:
            problems.append(f"--shift must be > 0, got {self.shift}")
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        if self.store_dtype not in ("bfloat16", "float16", "float32"):
            problems.append(f"store dtype must be bfloat16, float16 or float32, got {self.store_dtype}")
        if self.precision not in (None, "fp32", "bf16"):
            problems.append(f"--precision must be fp32 or bf16, got {self.precision}")
        if self.sampler not in TeacherSolver.KINDS:
            problems.append(f"--sampler {self.sampler!r}: choose one of {', '.join(TeacherSolver.KINDS)}")
        if problems:
            raise UserError("\n".join(problems))


@attrs.define
class SynthResult:
    index: ShardIndex
    written: int  # shards written by this call
    skipped: int  # shards found complete from an earlier call
    remaining: int  # shards still to write (only with max_shards)


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.safetensors"


def _noise_seed(seed: int, index: int) -> int:
    # One independent stream per prompt, fixed by (seed, prompt index) only.
    return (seed * 1_000_003 + index) % (2**63)


def _settings_record(settings: SynthSettings, prompts: PromptSet, teacher: str, guidance: float) -> dict[str, Any]:
    record = attrs.asdict(settings)
    record["shape"] = list(settings.shape)
    record["guidance"] = guidance
    record.update(prompts_sha256=prompts.sha256, prompts=len(prompts), teacher=teacher)
    record.update(conditions=sorted(prompts.conditions), conditions_sha256=prompts.conditions_sha256)
    return record


#: Settings that synth.json files written before they existed lack, with the value they had then.
_SETTINGS_DEFAULTS: dict[str, Any] = {"conditions": [], "conditions_sha256": None}


def _check_settings(out: Path, record: dict[str, Any]) -> None:
    path = out / SETTINGS_NAME
    if not path.exists():
        if (out / INDEX_NAME).exists() or any(out.glob("shard-*.safetensors")):
            raise UserError(f"--out {out}: holds shards not written by `rcm synth` (no {SETTINGS_NAME}); use another")
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable ({exc})") from None
    saved = {**_SETTINGS_DEFAULTS, **saved}
    diff = [f"{k}: {saved.get(k)!r} then, {record.get(k)!r} now" for k in record if saved.get(k) != record.get(k)]
    if diff:
        raise UserError(
            f"--out {out} was started with other settings; resuming would mix them. Differences:\n  "
            + "\n  ".join(diff)
        )


def _existing_shard(path: Path, first: int, count: int, known: Mapping[str, ShardEntry]) -> ShardEntry:
    """The index entry of a shard left by an earlier call, after checking it holds exactly its prompts."""
    header, _ = read_header(path)
    entry = header.get("prompt_index")
    if entry is None or list(entry.get("shape", [])) != [count]:
        raise ShardError(f"{path} [prompt_index]: expected prompts {first}..{first + count - 1}; delete the file")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        indices = f.get_tensor("prompt_index").tolist()
    if indices != list(range(first, first + count)):
        raise ShardError(f"{path} [prompt_index]: holds prompts {indices}, expected {first}..{first + count - 1}")
    size = path.stat().st_size
    old = known.get(path.name)
    if old is not None and old.bytes == size and old.sha256:
        return old
    return ShardEntry(file=path.name, count=count, bytes=size, sha256=file_sha256(path))


def _index_of(out: Path, entries: Sequence[ShardEntry], negative: bool, captions: bool, info: dict) -> ShardIndex:
    header, _ = read_header(out / entries[0].file)
    tensors = {key: TensorSpec(_CODES[str(e["dtype"])], list(e["shape"])[1:]) for key, e in sorted(header.items())}
    return ShardIndex(
        root=out,
        tensors=tensors,
        shards=list(entries),
        captions=captions,
        negative=NEGATIVE_NAME if negative else None,
        info=info,
    )


def synthesise(
    recipe: Any,
    prompts: PromptSet,
    out: Path,
    settings: SynthSettings,
    *,
    role: str = "teacher",
    device: str = "auto",
    max_shards: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> SynthResult:
    """Sample ``recipe``'s teacher for every prompt and write latent shards into ``out`` (resumable)."""
    from rcm_registry.engine.graph import build_network, load_strict, pick_device, read_weights
    from rcm_registry.engine.progress import Progress
    from rcm_registry.engine.trainer import autocast

    settings.check()
    if role not in recipe.networks:
        raise UserError(f"--network: the recipe has no network {role!r} (has: {', '.join(recipe.networks)})")
    wrapper_spec = recipe.body.teacher_wrapper
    if wrapper_spec is None:
        raise UserError("the recipe has no `teacher_wrapper:`; rcm synth reads the teacher through it")
    text_spec = recipe.body.codecs.get("text")
    if prompts.text is None and text_spec is None:
        raise UserError(
            "the recipe has no `codecs.text` to encode the prompts: add one (e.g. "
            "`codecs: {text: {use: umt5, path: ...}}`) or pass precomputed embeddings as --prompts FILE.safetensors"
        )
    net_role = recipe.networks[role]
    check_conditions(role, net_role.spec, network_conditions(net_role.spec, settings.shape), prompts.conditions)
    wrapper = wrapper_spec.build()
    guidance = settings.guidance if settings.guidance is not None else float(getattr(wrapper, "guidance", 1.0))
    settings = attrs.evolve(settings, precision=settings.precision or recipe.body.run.precision)
    record = _settings_record(settings, prompts, net_role.spec.name, guidance)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, record)
    for stale in out.glob(".*.tmp-*"):  # a write cut short by a kill; its shard is simply redone
        stale.unlink(missing_ok=True)

    n = len(prompts)
    size = settings.shard_size
    n_shards = math.ceil(n / size)
    known: dict[str, ShardEntry] = {}
    if (out / INDEX_NAME).is_file():
        try:
            known = {e.file: e for e in ShardIndex.read(out).shards}
        except ShardError:
            known = {}  # rebuilt from the shards themselves below
    entries: dict[int, ShardEntry] = {}
    for k in range(n_shards):
        path = out / shard_name(k)
        if path.is_file():
            entries[k] = _existing_shard(path, k * size, min(size, n - k * size), known)
    skipped = len(entries)
    info = {
        "teacher": net_role.spec.name,
        "teacher_wrapper": wrapper_spec.name,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "shift": settings.shift,
        "guidance": guidance,
        "negative_prompt": settings.negative_prompt,
        "seed": settings.seed,
        "precision": settings.precision,
        "prompts": prompts.source.name,
    }
    if prompts.conditions:
        info["conditions"] = sorted(prompts.conditions)
    captions = prompts.captions is not None
    todo = [k for k in range(n_shards) if k not in entries]
    if max_shards is not None:
        todo = todo[:max_shards]
    remaining = n_shards - len(entries) - len(todo)
    if not todo:
        index = _index_of(out, [entries[k] for k in sorted(entries)], (out / NEGATIVE_NAME).is_file(), captions, info)
        index.write()
        return SynthResult(index=index, written=0, skipped=skipped, remaining=remaining)

    dev = pick_device(device)
    if recipe.body.run.cpu_threads is not None:
        torch.set_num_threads(recipe.body.run.cpu_threads)
    if net_role.init_from:
        raise UserError(
            f"networks.{role} is initialised from {net_role.init_from!r}; synth needs a network with weights"
        )
    torch.manual_seed(settings.seed)  # networks without weights (tests) are initialised reproducibly
    net = build_network(net_role)
    if net_role.weights is not None:
        load_strict(net, read_weights(net_role.weights), f"networks.{role}.weights ({net_role.weights.path})")
    net.to(dev).eval().requires_grad_(False)
    encoder = text_spec.build().to(dev) if (prompts.text is None and text_spec is not None) else None

    negative = _negative(prompts, encoder, settings, guidance, out)
    store = torch_dtype(settings.store_dtype)
    solver = TeacherSolver(settings.sampler, time_grid(settings.steps, settings.shift, settings.sigma_max))
    done = sum(e.count for e in entries.values())
    bar = Progress(n, done, every=1) if progress else None
    echo(
        f"synth: {n} prompts in {n_shards} shards of {size}; {skipped} shard(s) already done; "
        f"{settings.sampler} {solver.calls} steps, shift {settings.shift}, guidance {guidance}, "
        f"{settings.precision} on {dev}"
    )
    written = 0
    for k in todo:
        first, count = k * size, min(size, n - k * size)
        parts: dict[str, list[Tensor]] = {"latents": [], "text": [], "text_mask": []}
        for b0 in range(first, first + count, settings.batch_size):
            ids = list(range(b0, min(b0 + settings.batch_size, first + count)))
            text, mask = _embed(prompts, ids, encoder, dev)
            extras = _stored_conditions(prompts, ids, store)
            with autocast(dev, settings.precision or "fp32"):
                latents = _sample(net, wrapper, solver, text, negative, guidance, ids, settings, dev, extras)
            parts["latents"].append(latents.to(store).cpu())
            parts["text"].append(text.to(store).cpu())
            parts["text_mask"].append(mask.to(torch.bool).cpu())
            for key, value in extras.items():
                parts.setdefault(COND_PREFIX + key, []).append(value)
            done += len(ids)
            if bar is not None:
                bar.update(done, {})
        tensors = {key: torch.cat(values) for key, values in parts.items()}
        tensors["prompt_index"] = torch.arange(first, first + count, dtype=torch.int64)
        shard_captions = prompts.captions[first : first + count] if prompts.captions is not None else None
        entries[k] = write_shard(out / shard_name(k), tensors, shard_captions)
        written += 1
        index = _index_of(out, [entries[j] for j in sorted(entries)], negative is not None, captions, info)
        index.write()  # after every shard, so a partial dataset is already usable
    if bar is not None:
        bar.close()
    return SynthResult(index=index, written=written, skipped=skipped, remaining=remaining)


def _embed(prompts: PromptSet, ids: list[int], encoder: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    if prompts.text is not None:
        assert prompts.text_mask is not None
        return prompts.text[ids].to(device), prompts.text_mask[ids].to(device)
    assert prompts.captions is not None
    with torch.no_grad():
        text, mask = encoder.encode([prompts.captions[i] for i in ids])
    return text, mask


def _stored_conditions(prompts: PromptSet, ids: list[int], store: torch.dtype) -> dict[str, Tensor]:
    """The conditions of prompts ``ids`` as the shards store them (floating point in the store dtype)."""
    return {
        key: (value[ids].to(store) if value.is_floating_point() else value[ids]).contiguous()
        for key, value in prompts.conditions.items()
    }


def _negative(
    prompts: PromptSet, encoder: Any, settings: SynthSettings, guidance: float, out: Path
) -> tuple[Tensor, Tensor] | None:
    """The negative-prompt embedding (written to ``negative.safetensors``), or None without CFG."""
    if prompts.text is not None:
        if prompts.negative_text is None:
            if guidance != 1.0:
                raise UserError(
                    f"--prompts {prompts.source}: no negative_text embedding for CFG (guidance {guidance}); "
                    "add one to the file or pass --guidance 1"
                )
            return None
        if settings.negative_prompt:
            raise UserError("--negative-prompt needs a text codec; the prompts are precomputed embeddings")
        mask = prompts.negative_mask
        if mask is None:
            mask = prompts.negative_text.abs().amax(-1) > 0
        text = prompts.negative_text
    else:
        with torch.no_grad():
            text, mask = encoder.encode([settings.negative_prompt])
    store = torch_dtype(settings.store_dtype)
    path = out / NEGATIVE_NAME
    if not path.is_file():
        from safetensors.torch import save_file

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tensors = {"text": text.to(store).cpu().contiguous(), "text_mask": mask.to(torch.bool).cpu().contiguous()}
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "prompt": settings.negative_prompt})
        _publish(tmp, path)
    return text, mask


def conditions_on(device: torch.device, conditions: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Conditions besides the text on ``device``, floating ones in float32 (as the latent_shards dataset
    gives them to training, whatever they were stored in)."""
    return {k: v.to(device, torch.float32) if v.is_floating_point() else v.to(device) for k, v in conditions.items()}


def _sample(
    net: nn.Module,
    wrapper: Any,
    solver: TeacherSolver,
    text: Tensor,
    negative: tuple[Tensor, Tensor] | None,
    guidance: float,
    ids: list[int],
    settings: SynthSettings,
    device: torch.device,
    extras: Mapping[str, Tensor] | None = None,
) -> Tensor:
    b = len(ids)
    # The conditions besides the text go to both CFG branches, as the latent_shards dataset gives them.
    extra = conditions_on(device, extras or {})
    condition = {"text": text, **extra}
    null = None
    if negative is not None:
        null = {"text": negative[0].to(device=device, dtype=text.dtype).expand(b, -1, -1), **extra}
    noise = []
    for i in ids:
        g = torch.Generator(device=device).manual_seed(_noise_seed(settings.seed, i))
        noise.append(torch.randn(settings.shape, generator=g, device=device))
    x = math.sin(solver.times[0]) * torch.stack(noise).to(torch.float64)

    def denoise(x_t: Tensor, t: float) -> Tensor:
        times = torch.full((b,), t, dtype=torch.float64, device=device)
        x0, _ = wrapper.denoise(net, x_t, times, condition, guidance=guidance, null_condition=null)
        return x0

    with torch.no_grad():
        return solver(denoise, x).to(torch.float32)
