"""``latent_shards``: precomputed latents and text embeddings from safetensors shards.

The on-disk format (``index.json`` + ``shard-NNNNNN.safetensors`` + optional ``negative.safetensors``) is
documented in :mod:`rcm_plugins.data.latent_shards_format`. ``rcm synth`` writes it through the config's
``synth_store`` (:class:`rcm_plugins.data.latent_shards_writer.LatentShardsWriter`).

Order, rank split, read-ahead and resume state are those of every shard dataset
(:mod:`rcm_plugins.data.shard_stream`); the order of a dataset depends only on its shard sizes, the seed
and the epoch.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
import torch
from rcm_plugins.data.latent_shards_format import (
    CAPTIONS_KEY,
    INDEX_NAME,
    ShardError,
    ShardIndex,
    check_negative,
    check_shard,
    check_tensors,
    file_sha256,
    read_header,
)
from rcm_plugins.data.latent_shards_writer import LatentShardsWriter
from rcm_plugins.data.shard_stream import ShardStream, ShardStreamConfig
from torch import Tensor

import rcm_registry as rr
from rcm_registry.conditions import COND_PREFIX
from rcm_registry.protocols import SampleShapes


@attrs.define
class LatentShardsConfig(ShardStreamConfig):
    """``{use: latent_shards, path: DIR}``: ``path`` is a directory with ``index.json`` (written by ``rcm synth``
    or ``rcm convert-data``); the other options are every shard dataset's
    (:class:`rcm_plugins.data.shard_stream.ShardStreamConfig`) and ``verify_checksums``."""

    #: Hash every shard (sha256 from the index) the first time it is read. Size and header are always checked.
    verify_checksums: bool = False

    def sample_shapes(self) -> SampleShapes:
        """The per-sample shapes ``index.json`` records (latents, text, ``cond.NAME``); a ShardError naming
        the directory or the index when it cannot be read."""
        index = ShardIndex.read(self.path)
        condition = {
            key[len(COND_PREFIX) :]: spec.shape for key, spec in index.tensors.items() if key.startswith(COND_PREFIX)
        }
        condition["text"] = index.tensors["text"].shape
        if self.mask_key is not None:
            condition[self.mask_key] = index.tensors["text"].shape[:1]
        return SampleShapes(x0=index.sample_shape, condition=condition, source=str(Path(self.path) / INDEX_NAME))

    def synth_store(self, root: Path) -> LatentShardsWriter:
        """How ``rcm synth`` reads its prompts and writes this dataset into ``root``."""
        return LatentShardsWriter(root)


@attrs.define
class _Layout:
    """Where the samples are: what a reader needs, without a reference back to the dataset (so a prefetch
    thread does not keep an abandoned dataset alive)."""

    index: ShardIndex
    starts: Tensor  # first global id of each shard
    ends: Tensor  # one past the last
    verify: bool
    verified: set[int] = attrs.field(factory=set)  # shards whose sha256 was checked

    def shard_of(self, ids: Tensor) -> Tensor:
        return torch.searchsorted(self.ends, ids, right=True)


class _OpenShard:
    """A shard opened for reading rows: its file and, per key, where the data starts and a row's size."""

    def __init__(self, path: Path, layout: _Layout, count: int) -> None:
        header, _ = read_header(path)  # again: the file may have changed since the dataset was built
        problems = check_tensors(path, header, layout.index.tensors, count)
        if problems:
            raise ShardError("\n".join(problems))
        size = path.stat().st_size
        data_start = size - max(int(e["data_offsets"][1]) for e in header.values())
        self.path = path
        self.rows: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        for key, spec in layout.index.tensors.items():
            dtype = getattr(torch, spec.dtype)
            row_bytes = math.prod(spec.shape) * dtype.itemsize
            self.rows[key] = (data_start + int(header[key]["data_offsets"][0]), row_bytes, dtype, spec.shape)
        self.file = open(path, "rb")  # kept open across reads; closed by close()

    def read(self, key: str, row: int) -> Tensor:
        begin, row_bytes, dtype, shape = self.rows[key]
        self.file.seek(begin + row * row_bytes)
        data = self.file.read(row_bytes)
        if len(data) != row_bytes:
            raise ShardError(f"{self.path} [{key}]: truncated since it was checked (row {row} cut short)")
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)

    def close(self) -> None:
        self.file.close()


class _Reader:
    """Reads rows from shards with plain file reads (one reader per thread).

    Not memory maps: a shard truncated or replaced while training would then kill the process with
    SIGBUS; a read gives an error naming the file instead, and fetches only the rows a batch needs.
    """

    def __init__(self, layout: _Layout, open_files: int) -> None:
        self.layout = layout
        self.open_files = open_files
        self.handles: OrderedDict[int, _OpenShard] = OrderedDict()

    def _handle(self, shard: int) -> _OpenShard:
        handle = self.handles.get(shard)
        if handle is not None:
            self.handles.move_to_end(shard)
            return handle
        layout = self.layout
        entry = layout.index.shards[shard]
        path = layout.index.root / entry.file
        if layout.verify and shard not in layout.verified:
            if entry.sha256 is None:
                raise ShardError(f"{path}: verify_checksums is on but the index has no sha256 for it")
            digest = file_sha256(path)
            if digest != entry.sha256:
                raise ShardError(f"{path}: sha256 {digest[:12]}… differs from the index ({entry.sha256[:12]}…)")
            layout.verified.add(shard)
        try:
            handle = _OpenShard(path, layout, entry.count)
        except OSError as exc:
            raise ShardError(f"{path}: cannot open ({exc})") from None
        self.handles[shard] = handle
        while len(self.handles) > self.open_files:
            self.handles.popitem(last=False)[1].close()
        return handle

    def rows(self, ids: Tensor) -> dict[str, Tensor]:
        """The stored tensors of global sample ids, stacked in the order given."""
        layout = self.layout
        shards = layout.shard_of(ids)
        out: dict[str, Tensor] = {}
        for key, spec in layout.index.tensors.items():
            out[key] = torch.empty((len(ids), *spec.shape), dtype=getattr(torch, spec.dtype))
        for shard in torch.unique(shards).tolist():
            where = (shards == shard).nonzero().flatten().tolist()
            local = (ids[where] - layout.starts[shard]).tolist()
            handle = self._handle(shard)
            for key in out:
                try:
                    for i, row in zip(where, local, strict=True):
                        out[key][i] = handle.read(key, row)
                except OSError as exc:
                    raise ShardError(f"{handle.path} [{key}]: cannot read ({exc})") from None
        return out

    def close(self) -> None:
        while self.handles:
            self.handles.popitem()[1].close()


class LatentShards(ShardStream):
    """Latents and text embeddings from safetensors shards: shuffled, resumable, split across ranks."""

    name = "latent_shards"
    error = ShardError

    def __init__(self, config: LatentShardsConfig) -> None:
        self.config = config
        self.index = ShardIndex.read(config.path)
        self.where = str(self.index.root)
        problems = [p for entry in self.index.shards for p in check_shard(self.index, entry)]
        problems += check_negative(self.index)
        if not self.index.shards:
            problems.append(f"{self.index.root}: the index lists no shards")
        if problems:
            raise ShardError(
                f"{len(problems)} problem(s) in latent shards {self.index.root}:\n  " + "\n  ".join(problems)
            )
        self.sample_shape: tuple[int, ...] = self.index.sample_shape
        self.null_text, self.null_mask = self._null()
        self._start_stream([s.count for s in self.index.shards])
        self._layout = _Layout(self.index, self.starts, self.ends, config.verify_checksums)

    def _new_reader(self) -> _Reader:
        return _Reader(self._layout, open_files=self.config.shuffle_window + 1)

    def _null(self) -> tuple[Tensor | None, Tensor | None]:
        mode = self.config.null_condition
        path = self.index.negative
        if mode == "negative" and path is None:
            raise ShardError(
                f"{self.index.root}: null_condition: negative, but the dataset stores no negative-prompt embedding"
            )
        if mode in ("negative", "auto") and path is not None:
            from safetensors.torch import load_file

            tensors = load_file(str(self.index.root / path))
            mask = tensors.get("text_mask")
            return tensors["text"].float(), (mask.bool() if mask is not None else None)
        if mode == "zeros":
            spec = self.index.tensors["text"]
            return torch.zeros(1, *spec.shape), torch.zeros(1, spec.shape[0], dtype=torch.bool)
        return None, None

    def captions(self, ids: Tensor) -> list[str] | None:
        """Captions of global sample ids (None when the dataset stores none)."""
        if not self.index.captions:
            return None
        out = []
        shards = self._layout.shard_of(ids).tolist()
        for i, shard in zip(ids.tolist(), shards, strict=True):
            _, metadata = read_header(self.index.root / self.index.shards[shard].file)
            out.append(json.loads(metadata[CAPTIONS_KEY])[i - int(self.starts[shard])])
        return out


def latent_shards(config: LatentShardsConfig) -> LatentShards:
    """Precomputed latents + text embeddings from safetensors shards (seeded shuffle, resumable, rank split)."""
    return LatentShards(config)


COMPONENT = rr.Component(kind="dataset", name="latent_shards", factory=latent_shards, config=LatentShardsConfig)


def open_dataset(path: str | Path, **options: Any) -> LatentShards:
    """A :class:`LatentShards` for ``path`` outside a recipe (tools, tests)."""
    return LatentShards(LatentShardsConfig(path=str(path), **options))
