"""The rCM release's tar shards: what NVlabs/rcm's ``rcm/datasets/build_synthetic_dataset.py`` writes (its
Wan2.1-14B synthetic data) and its ``rcm/datasets/webdataset.py`` reads.

Files
=====

A directory (or a glob such as ``DIR/shard*.tar``) of uncompressed tar files ``shard_NNNNNN.tar``. Each holds,
per sample, three members named by the sample's index in the builder's prompt list::

    000000512.latent.pt    torch.save of one latent, (C, T, H, W) bfloat16 (Wan2.1 480p 81 frames: 16x21x60x104)
    000000512.embed.pt     torch.save of its umT5 embedding, (L, D) bfloat16: (512, 4096), zero past the
                           prompt's tokens (the encoder pads every prompt to 512 and cuts longer ones)
    000000512.prompt.txt   the prompt, UTF-8

The builder appends to ``shard_NNNNNN.tar.tmp`` while a shard is in progress and renames it when the shard
is done; those files are skipped (and counted), never read. The release's shard merger writes members
under a folder of the sample's key (``000000512/000000512.latent.pt``): a sample's key is the member name
up to the first dot of its last part, so both layouts read alike. Members of other kinds are ignored; a
member repeated in one shard (the builder re-adds a sample it had not finished before a restart) counts
with its last copy, as tar extraction would. The negative prompt's embedding is not in the shards: the
release keeps it in a file of its own (``umT5_wan_negative_emb.pt``, (512, 4096)), which the dataset's
``negative`` option names.

Index
=====

:meth:`TarIndex.build` reads every shard's tar headers (member names, data offsets and sizes) and, for each
latent and embedding, only the pickle of its torch file: ``torch.save`` writes a zip whose small
``data.pkl`` holds the tensor's dtype and shape and whose separate ``data/0`` record holds the values, so
the zip directory at the end of the member and that record (a few hundred bytes) are all that is read.
The pickle is read by an unpickler that knows only the four names a saved tensor uses (the tensor
rebuild function, the storage types, ``OrderedDict``) and refuses everything else, so indexing runs no
code; reading a sample later goes through ``torch.load(weights_only=True)`` and checks the tensor against
the index. A torch file in the pre-zip format has no separate pickle and is loaded whole (weights only).

Problems (a truncated or corrupt tar, a sample missing one of its members, a member that is not one
tensor or whose pickle holds more than tensors, a latent or embedding whose shape or dtype differs from
the first sample's) are collected for all shards and reported together, each with the shard's path and
the member's name. The index is kept in memory for the process (by path, size and modification time),
so that the check before training and the dataset's opening read the headers once; nothing is written.
"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
import torch
from rcm_plugins.data.latent_shards_format import TensorSpec
from torch import Tensor

from rcm_registry.errors import UserError

LATENT = "latent.pt"
EMBED = "embed.pt"
PROMPT = "prompt.txt"
#: A sample's members, in the order of :attr:`ShardScan.members`' second axis.
KINDS = (LATENT, EMBED, PROMPT)
SHARD_SUFFIX = ".tar"
IN_PROGRESS_SUFFIX = ".tar.tmp"
_BLOCK = 512  # tar block size

#: The storage types of ``torch.save``'s pickle, by the dtype they hold.
_STORAGE_DTYPES = {
    "BFloat16Storage": "bfloat16",
    "HalfStorage": "float16",
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class TarShardError(UserError):
    """rCM release tar shards that cannot be trained on: each line names the shard and, where known, the member."""


def find_shards(path: str) -> tuple[list[Path], list[Path]]:
    """The complete shards and the in-progress ones (``*.tar.tmp``) a directory, glob or file names, by name."""
    if any(c in path for c in "*?["):
        parent, pattern = Path(path).parent, Path(path).name
        if any(c in str(parent) for c in "*?["):
            raise TarShardError(f"{path}: only the file name part of the path may hold wildcards")
        shards = sorted(p for p in parent.glob(pattern) if p.is_file() and p.name.endswith(SHARD_SUFFIX))
        pending = sorted(p for p in parent.glob(pattern + ".tmp") if p.is_file())
    elif Path(path).is_dir():
        shards = sorted(p for p in Path(path).glob("*" + SHARD_SUFFIX) if p.is_file())
        pending = sorted(p for p in Path(path).glob("*" + IN_PROGRESS_SUFFIX) if p.is_file())
    elif Path(path).is_file() and path.endswith(SHARD_SUFFIX):
        shards, pending = [Path(path)], []
    else:
        raise TarShardError(f"{path}: no such directory, tar file or glob of shard_*.tar files")
    return shards, pending


# -- one torch file inside a tar ----------------------------------------------------------------------


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes ``[start, start + size)`` of an open file (a tar member's data)."""

    def __init__(self, file: Any, start: int, size: int) -> None:
        self.file, self.start, self.size, self.pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = min(max(base + offset, 0), self.size)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        self.file.seek(self.start + self.pos)
        data = self.file.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _Refused(Exception):
    """A pickle naming something besides the parts of a saved tensor."""


@attrs.frozen
class _Storage:
    dtype: str


def _rebuilt_spec(storage: Any, offset: Any, size: Any, *rest: Any) -> TensorSpec:
    if not isinstance(storage, _Storage) or not isinstance(size, tuple):
        raise _Refused("a tensor rebuilt from something other than a storage")
    return TensorSpec(storage.dtype, size)


class _HeaderUnpickler(pickle.Unpickler):
    """Reads the dtype and shape of ``torch.save``'s pickle of one tensor; builds nothing, runs nothing."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuilt_spec
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and isinstance(pid[1], _Storage):
            return pid[1]
        raise _Refused(f"persistent id {str(pid)[:60]}")


def _refused_global(exc: BaseException) -> str | None:
    """The name torch's weights-only unpickler refused, or None when it failed for another reason."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return found.group(1) if found else None


def load_tensor(data: bytes, where: str) -> Tensor:
    """One tensor from a torch file's bytes, through ``torch.load(weights_only=True)``; a named error otherwise."""
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        name = _refused_global(exc) if isinstance(exc, pickle.UnpicklingError) else None
        if name is not None:
            raise TarShardError(
                f"{where}: refused: its pickle calls {name}, and only tensors are read (torch.load weights_only)"
            ) from None
        first = next((line for line in str(exc).splitlines() if line.strip()), "")[:160]
        raise TarShardError(f"{where}: not a readable torch file ({type(exc).__name__}: {first})") from None
    if not isinstance(value, Tensor):
        raise TarShardError(f"{where}: holds a {type(value).__name__}, not a tensor")
    return value


def read_tensor_spec(file: Any, offset: int, size: int, where: str) -> TensorSpec:
    """The dtype and shape of the torch file at ``[offset, offset + size)`` of ``file``, from its pickle only."""
    window = _Window(file, offset, size)
    try:
        archive = zipfile.ZipFile(window)
    except zipfile.BadZipFile:  # the pre-zip torch format: no separate pickle to read
        file.seek(offset)
        tensor = load_tensor(file.read(size), where)
        return TensorSpec(str(tensor.dtype).removeprefix("torch."), tensor.shape)
    try:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TarShardError(f"{where}: not a torch file (a zip without one data.pkl)")
        with archive.open(pickles[0]) as f:
            spec = _HeaderUnpickler(f).load()
    except _Refused as exc:
        raise TarShardError(
            f"{where}: refused: its pickle calls {exc}, and only tensors are read (torch.load weights_only)"
        ) from None
    except TarShardError:
        raise
    except Exception as exc:  # a damaged zip or pickle
        raise TarShardError(f"{where}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(spec, TensorSpec):
        raise TarShardError(f"{where}: holds a {type(spec).__name__}, not a tensor")
    return spec


def squeeze_spec(spec: TensorSpec, dims: int) -> TensorSpec:
    """``spec`` without a leading batch dimension of 1 where it has one more dimension than ``dims``."""
    if len(spec.shape) == dims + 1 and spec.shape[0] == 1:
        return TensorSpec(spec.dtype, spec.shape[1:])
    return spec


#: Dimensions of one sample's latent (C, T, H, W) and embedding (L, D).
LATENT_DIMS, EMBED_DIMS = 4, 2


# -- one shard ----------------------------------------------------------------------------------------


@attrs.frozen
class SpecRun:
    """Samples of one shard whose tensor of one kind has one spec: the first such member and their number."""

    spec: TensorSpec
    member: str
    count: int


@attrs.frozen(eq=False)
class ShardScan:
    """What indexing one shard found: its complete samples (in tar order) and its problems."""

    path: Path
    keys: list[str]
    #: (n, 3, 2) int64: the data offset and size of each sample's latent, embedding and prompt.
    members: Tensor
    #: Per kind (``latent.pt``, ``embed.pt``): the specs of its samples, grouped, in order of appearance.
    specs: dict[str, list[SpecRun]]
    problems: list[str]

    def member(self, row: int, kind: str) -> str:
        return f"{self.keys[row]}.{kind}"


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000000512.latent.pt`` → (``dir/000000512``, ``latent.pt``)."""
    last = name.rsplit("/", 1)[-1]
    dot = last.find(".")
    if dot < 0:
        return name, ""
    cut = len(name) - len(last) + dot
    return name[:cut], name[cut + 1 :]


def _read_members(path: Path, file: Any, size: int, problems: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """Key → kind → (data offset, size) of the tar's file members; truncation and corruption into ``problems``."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    end: int | None = None
    try:
        with tarfile.open(fileobj=file, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    key, kind = _split_name(info.name)
                    if kind in KINDS:
                        found.setdefault(key, {})[kind] = (info.offset_data, info.size)
            end = tar.offset
    except tarfile.ReadError as exc:
        what = "truncated" if found else "not a tar file, or truncated"
        problems.append(f"{path}: {what} ({exc}; {size} bytes)")
    if end is not None:
        # A tar ends with zero blocks. tarfile stops quietly at a header cut short or garbled, so look.
        file.seek(end)
        block = file.read(_BLOCK)
        if len(block) < _BLOCK:
            problems.append(
                f"{path}: truncated ({size} bytes; it stops after byte {end} without the end of the archive)"
            )
        elif block.strip(b"\0"):
            problems.append(f"{path}: corrupt tar header at byte {end} (members after it cannot be read)")
    for key, kinds in found.items():
        for kind, (offset, length) in kinds.items():
            if offset + length > size:
                problems.append(
                    f"{path} [{key}.{kind}]: truncated (its data ends at byte {offset + length}, the file at {size})"
                )
    return found


def scan_shard(path: Path) -> ShardScan:
    """Index one shard (see the module docs): members, tensor specs and every problem, without the tensors."""
    problems: list[str] = []
    keys: list[str] = []
    rows: list[list[tuple[int, int]]] = []
    specs: dict[str, list[SpecRun]] = {LATENT: [], EMBED: []}
    try:
        size = path.stat().st_size
        file = open(path, "rb")
    except OSError as exc:
        return ShardScan(path, [], torch.zeros(0, 3, 2, dtype=torch.int64), specs, [f"{path}: cannot read ({exc})"])
    with file:
        found = _read_members(path, file, size, problems)
        for key, kinds in found.items():
            missing = [kind for kind in KINDS if kind not in kinds]
            if missing:
                present = ", ".join(f"{key}.{k}" for k in KINDS if k in kinds)
                problems.extend(f"{path} [{key}.{kind}]: missing (the shard has {present})" for kind in missing)
                continue
            if any(offset + length > size for offset, length in kinds.values()):
                continue  # named above
            try:
                sample_specs = {
                    kind: squeeze_spec(read_tensor_spec(file, *kinds[kind], f"{path} [{key}.{kind}]"), dims)
                    for kind, dims in ((LATENT, LATENT_DIMS), (EMBED, EMBED_DIMS))
                }
            except TarShardError as exc:
                problems.append(str(exc))
                continue
            for kind, spec in sample_specs.items():
                runs = specs[kind]
                same = next((i for i, run in enumerate(runs) if run.spec == spec), None)
                if same is None:
                    runs.append(SpecRun(spec, f"{key}.{kind}", 1))
                else:
                    runs[same] = attrs.evolve(runs[same], count=runs[same].count + 1)
            keys.append(key)
            rows.append([kinds[kind] for kind in KINDS])
    members = torch.tensor(rows, dtype=torch.int64) if rows else torch.zeros(0, 3, 2, dtype=torch.int64)
    return ShardScan(path, keys, members, specs, problems)


_SCANS: dict[tuple[str, int, int], ShardScan] = {}
_SCANS_LOCK = threading.Lock()


def cached_scan(path: Path) -> ShardScan:
    """:func:`scan_shard`, once per process for a file of one size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return scan_shard(path)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _SCANS_LOCK:
        hit = _SCANS.get(key)
    if hit is None:
        hit = scan_shard(path)
        with _SCANS_LOCK:
            _SCANS[key] = hit
    return hit


# -- all shards ---------------------------------------------------------------------------------------


def _describe(spec: TensorSpec) -> str:
    return f"{list(spec.shape)} {spec.dtype}"


@attrs.define
class TarIndex:
    """Every complete shard of a release dataset, indexed, with the problems of all of them."""

    source: str
    shards: list[ShardScan]
    in_progress: list[Path]
    #: The first sample's latent (C, T, H, W) and embedding (L, D); None when no sample could be read.
    latent: TensorSpec | None
    embed: TensorSpec | None
    problems: list[str]

    @classmethod
    def build(cls, source: str) -> TarIndex:
        shards, pending = find_shards(source)
        scans = [cached_scan(p) for p in shards]
        problems = [p for scan in scans for p in scan.problems]
        first: dict[str, tuple[TensorSpec, str]] = {}
        for scan in scans:
            for kind, dims, what in ((LATENT, LATENT_DIMS, "latent"), (EMBED, EMBED_DIMS, "embedding")):
                for run in scan.specs[kind]:
                    if kind not in first:
                        first[kind] = (run.spec, f"{scan.path} [{run.member}]")
                        if len(run.spec.shape) != dims or not torch_dtype(run.spec.dtype).is_floating_point:
                            wanted = "(C, T, H, W)" if kind == LATENT else "(L, D)"
                            problems.append(
                                f"{scan.path} [{run.member}]: {what} {_describe(run.spec)}, expected floats {wanted}"
                            )
                    elif run.spec != first[kind][0]:
                        more = f" ({run.count - 1} more like it in this shard)" if run.count > 1 else ""
                        problems.append(
                            f"{scan.path} [{run.member}]: {what} {_describe(run.spec)}, the first sample's "
                            f"({first[kind][1]}) is {_describe(first[kind][0])}{more}"
                        )
        if not shards:
            problems.append(
                f"{source}: no complete shards (*.tar)" + (f"; {len(pending)} in progress" if pending else "")
            )
        elif not any(scan.keys for scan in scans) and not problems:
            problems.append(f"{source}: the shards hold no samples")
        latent = first.get(LATENT, (None, ""))[0]
        embed = first.get(EMBED, (None, ""))[0]
        return cls(source, [s for s in scans if s.keys], pending, latent, embed, problems)

    @property
    def total(self) -> int:
        return sum(len(s.keys) for s in self.shards)

    def skipped_note(self) -> str | None:
        """One line on the in-progress shards skipped, or None when there are none."""
        if not self.in_progress:
            return None
        names = ", ".join(p.name for p in self.in_progress[:3]) + (", ..." if len(self.in_progress) > 3 else "")
        return f"{self.source}: skipped {len(self.in_progress)} shard(s) still being written ({names}; never read)"

    def check(self) -> None:
        """Raise every problem at once (the skipped in-progress shards listed with them)."""
        if self.problems:
            note = self.skipped_note()
            lines = self.problems + ([note] if note else [])
            raise TarShardError(
                f"{len(self.problems)} problem(s) in rCM tar shards {self.source}:\n  " + "\n  ".join(lines)
            )


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def read_negative(path: str, embed: TensorSpec | None) -> tuple[Tensor | None, list[str]]:
    """The negative prompt's embedding file as (1, L, D), with its problems (shape against the shards')."""
    file = Path(path)
    if not file.is_file():
        return None, [f"{file}: no such negative-prompt embedding file"]
    try:
        tensor = load_tensor(file.read_bytes(), str(file))
    except TarShardError as exc:
        return None, [str(exc)]
    if tensor.dim() == EMBED_DIMS + 1 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if embed is not None and tuple(tensor.shape) != embed.shape:
        return None, [
            f"{file}: negative-prompt embedding {list(tensor.shape)}, the shards' embeddings are {list(embed.shape)}"
        ]
    if not tensor.is_floating_point() or tensor.dim() != EMBED_DIMS:
        return None, [f"{file}: negative-prompt embedding {list(tensor.shape)} {tensor.dtype}, expected floats (L, D)"]
    return tensor.unsqueeze(0), []
