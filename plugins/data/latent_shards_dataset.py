"""``latent_shards``: precomputed latents and text embeddings from safetensors shards.

The on-disk format (``index.json`` + ``shard-NNNNNN.safetensors`` + optional ``negative.safetensors``) is
documented in :mod:`rcm_plugins.data.latent_shards_format`. ``rcm synth`` writes it through the config's
``synth_store`` (:class:`rcm_plugins.data.latent_shards_writer.LatentShardsWriter`).

Order of the samples. Epoch ``e`` has its own permutation, a function of ``(seed, e)`` only: the shards
are shuffled, cut into windows of ``shuffle_window`` shards, and the samples of each window shuffled
together. ``next_batch(B)`` returns the next ``B`` samples; a batch that runs past the end of an epoch
continues into the next one.

Ranks. By default every process reads the same stream, which is what the engine's data parallelism
wants (it draws the global batch on every rank and keeps each rank's rows). With ``split_ranks: true``,
rank ``r`` of ``W`` (from the config, else torchrun's ``RANK``/``WORLD_SIZE``) takes the ``r``-th of ``W``
equal contiguous slices of each epoch's order instead (the ``N mod W`` samples left over change from
epoch to epoch): each rank reads about 1/W of the shards and all ranks make the same number of batches.

The read position (epoch, offset) is the whole state: a resumed run continues with exactly the batches
an uninterrupted one would have seen. The engine's generator is not used for the order, so the stream
does not depend on what else draws random numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

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
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.conditions import COND_PREFIX
from rcm_registry.protocols import Batch, Condition, SampleShapes

NullMode = Literal["auto", "negative", "zeros", "none"]


@attrs.define
class LatentShardsConfig:
    """``{use: latent_shards, path: DIR}``; see the module docs for the order and the rank split."""

    #: A directory with ``index.json`` (written by ``rcm synth``).
    path: str
    #: Seed of the per-epoch shuffles.
    seed: int = attrs.field(default=0, validator=schema.non_negative)
    shuffle: bool = True
    #: Shards whose samples are mixed together (bigger: better mixing, more files open at a time).
    shuffle_window: int = attrs.field(default=8, validator=schema.positive)
    #: Batches read ahead by a background thread (0: read in the training thread).
    prefetch: int = attrs.field(default=2, validator=schema.non_negative)
    #: Give each rank its own disjoint part of every epoch. Off by default: the engine's data parallelism
    #: (``parallel:``) draws the same global batch on every rank and keeps each rank's rows, which needs
    #: every rank to see the same stream. Turn it on where each rank consumes a batch of its own.
    split_ranks: bool = False
    #: With ``split_ranks``: this process's rank and the number of ranks; unset: the ``RANK`` /
    #: ``WORLD_SIZE`` variables torchrun sets, else 0 and 1.
    rank: int | None = attrs.field(default=None, validator=schema.non_negative)
    world_size: int | None = attrs.field(default=None, validator=schema.positive)
    #: Hash every shard (sha256 from the index) the first time it is read. Size and header are always checked.
    verify_checksums: bool = False
    #: Null condition for classifier-free guidance: ``negative`` (the stored negative-prompt embedding;
    #: an error when there is none), ``zeros`` (an all-zero text embedding), ``none``, or ``auto`` (the
    #: negative prompt when stored, else none).
    null: NullMode = "auto"
    #: Also pass the text mask to the network under this condition key (Wan and Cosmos take none: their
    #: embeddings are already zero past each prompt).
    mask_key: str | None = None

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


def _resolve_rank(config: LatentShardsConfig) -> tuple[int, int]:
    if not config.split_ranks:
        return 0, 1

    def env(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ShardError(f"latent_shards: environment variable {name}={raw!r} is not an integer") from None

    world = config.world_size if config.world_size is not None else env("WORLD_SIZE", 1)
    rank = config.rank if config.rank is not None else env("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ShardError(f"latent_shards: rank {rank} is not in [0, world_size={world})")
    return rank, world


class _Failure:
    """An exception raised in the prefetch thread, handed to the training thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Prefetcher:
    """A background thread producing batches from a start position into a bounded queue."""

    def __init__(
        self,
        produce: Callable[[tuple[int, int], int], tuple[Batch, tuple[int, int]]],
        start: tuple[int, int],
        batch_size: int,
        depth: int,
    ) -> None:
        self.start = start
        self.batch_size = batch_size
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self._produce = produce
        self.thread = threading.Thread(target=self._run, name="latent-shards-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        position = self.start
        try:
            while not self.stopping.is_set():
                batch, position = self._produce(position, self.batch_size)
                if not self._put(batch):
                    return
        except _Gone:
            return
        except BaseException as exc:  # every failure must reach the training thread, never vanish here
            self._put(_Failure(exc))

    def _put(self, item: Any) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Batch:
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError(
                        "latent_shards: the prefetch thread stopped without a batch or an error"
                    ) from None
                continue
            if isinstance(item, _Failure):
                raise item.exc
            return item

    def close(self) -> None:
        self.stopping.set()
        while True:  # unblock a put waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        # The dataset's last reference can drop inside the worker (it holds one while producing): the
        # worker then stops by itself and must not wait for itself.
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


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


class _Gone(Exception):
    """The dataset a prefetch thread works for was garbage-collected."""


class LatentShards:
    """Latents and text embeddings from safetensors shards: shuffled, resumable, split across ranks."""

    def __init__(self, config: LatentShardsConfig) -> None:
        self.config = config
        self.index = ShardIndex.read(config.path)
        problems = [p for entry in self.index.shards for p in check_shard(self.index, entry)]
        problems += check_negative(self.index)
        if not self.index.shards:
            problems.append(f"{self.index.root}: the index lists no shards")
        if problems:
            raise ShardError(
                f"{len(problems)} problem(s) in latent shards {self.index.root}:\n  " + "\n  ".join(problems)
            )
        self.rank, self.world_size = _resolve_rank(config)
        counts = torch.tensor([s.count for s in self.index.shards], dtype=torch.int64)
        self.ends = torch.cumsum(counts, 0)
        self.starts = self.ends - counts
        self.total = int(self.ends[-1])
        self.per_rank = self.total // self.world_size
        if self.per_rank == 0:
            raise ShardError(f"{self.index.root}: {self.total} samples cannot feed {self.world_size} ranks")
        self.sample_shape: tuple[int, ...] = self.index.sample_shape
        self.epoch = 0
        self.offset = 0
        self._orders: OrderedDict[int, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._worker: _Prefetcher | None = None
        self._layout = _Layout(self.index, self.starts, self.ends, config.verify_checksums)
        self._reader = _Reader(self._layout, open_files=config.shuffle_window + 1)
        self.null_text, self.null_mask = self._null()

    # -- order ------------------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int) -> torch.Generator:
        digest = hashlib.sha256(f"latent_shards:{self.config.seed}:{epoch}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def order(self, epoch: int) -> Tensor:
        """This rank's global sample ids for ``epoch`` (length ``total // world_size``)."""
        with self._lock:  # the prefetch thread and the training thread both ask
            cached = self._orders.get(epoch)
            if cached is not None:
                return cached
            if self.config.shuffle:
                g = self._epoch_generator(epoch)
                shard_order = torch.randperm(len(self.index.shards), generator=g).tolist()
                window = self.config.shuffle_window
                parts = []
                for w in range(0, len(shard_order), window):
                    ids = torch.cat([torch.arange(self.starts[s], self.ends[s]) for s in shard_order[w : w + window]])
                    parts.append(ids[torch.randperm(len(ids), generator=g)])
                full = torch.cat(parts)
            else:
                full = torch.arange(self.total)
            mine = full[self.rank * self.per_rank : (self.rank + 1) * self.per_rank].clone()
            self._orders[epoch] = mine
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
            return mine

    def _ids(self, position: tuple[int, int], batch_size: int) -> tuple[Tensor, tuple[int, int]]:
        epoch, offset = position
        taken: list[Tensor] = []
        need = batch_size
        while need:
            order = self.order(epoch)
            part = order[offset : offset + need]
            taken.append(part)
            need -= len(part)
            offset += len(part)
            if offset >= len(order):
                epoch, offset = epoch + 1, 0
        return torch.cat(taken), (epoch, offset)

    # -- batches ----------------------------------------------------------------------------------
    def _null(self) -> tuple[Tensor | None, Tensor | None]:
        mode = self.config.null
        path = self.index.negative
        if mode == "negative" and path is None:
            raise ShardError(f"{self.index.root}: null: negative, but the dataset stores no negative-prompt embedding")
        if mode in ("negative", "auto") and path is not None:
            from safetensors.torch import load_file

            tensors = load_file(str(self.index.root / path))
            mask = tensors.get("text_mask")
            return tensors["text"].float(), (mask.bool() if mask is not None else None)
        if mode == "zeros":
            spec = self.index.tensors["text"]
            return torch.zeros(1, *spec.shape), torch.zeros(1, spec.shape[0], dtype=torch.bool)
        return None, None

    def _assemble(self, rows: Mapping[str, Tensor]) -> Batch:
        b = rows["latents"].shape[0]
        condition: Condition = {"text": rows["text"].float()}
        extras = {
            k[len(COND_PREFIX) :]: (v.float() if v.is_floating_point() else v)
            for k, v in rows.items()
            if k.startswith(COND_PREFIX)
        }
        condition.update(extras)
        key = self.config.mask_key
        if key is not None:
            mask = rows.get("text_mask")
            if mask is None:
                mask = rows["text"].abs().amax(-1) > 0
            condition[key] = mask.bool()
        null: Condition | None = None
        if self.null_text is not None:
            null = {"text": self.null_text.expand(b, -1, -1), **extras}
            if key is not None:
                nm = self.null_mask if self.null_mask is not None else self.null_text.abs().amax(-1) > 0
                null[key] = nm.expand(b, -1)
        return Batch(x0=rows["latents"].float(), condition=condition, null_condition=null)

    def _produce(self, position: tuple[int, int], batch_size: int, reader: _Reader) -> tuple[Batch, tuple[int, int]]:
        ids, position = self._ids(position, batch_size)
        return self._assemble(reader.rows(ids)), position

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        position = (self.epoch, self.offset)
        if self.config.prefetch == 0:
            batch, (self.epoch, self.offset) = self._produce(position, batch_size, self._reader)
            return batch
        worker = self._worker
        if worker is None or worker.batch_size != batch_size:
            self.close()
            # The worker gets its own reader (safetensors handles are not shared between threads) and only
            # a weak reference to the dataset, so that dropping the dataset ends the thread.
            reader = _Reader(self._layout, open_files=self.config.shuffle_window + 1)
            ref = weakref.ref(self)

            def produce(pos: tuple[int, int], size: int) -> tuple[Batch, tuple[int, int]]:
                dataset = ref()
                if dataset is None:
                    raise _Gone
                return dataset._produce(pos, size, reader)

            worker = self._worker = _Prefetcher(produce, position, batch_size, self.config.prefetch)
        try:
            batch = worker.get()
        except BaseException:
            self.close()  # the next call starts again from the same position
            raise
        _, (self.epoch, self.offset) = self._ids(position, batch_size)
        return batch

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        ids = torch.randint(self.total, (n,), generator=generator)
        batch = self._assemble(self._reader.rows(ids))
        return batch.condition, batch.null_condition

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

    # -- state ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "samples": self.total,
            "shards": len(self.index.shards),
            "world_size": self.world_size,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "shuffle_window": self.config.shuffle_window,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, **self._identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        now = self._identity()
        changed = [f"{k}: {state.get(k)!r} then, {v!r} now" for k, v in now.items() if state.get(k) != v]
        if changed:
            raise ShardError(
                f"latent_shards {self.index.root}: the dataset or its split changed since the checkpoint, so the "
                "resumed run would not see the batches it would have seen (" + "; ".join(changed) + ")"
            )
        self.close()
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def close(self) -> None:
        """Stop the prefetch thread (it is restarted by the next ``next_batch``)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"LatentShards({self.index.root}, {self.total} samples in {len(self.index.shards)} shards, "
            f"sample {list(self.sample_shape)}, rank {self.rank}/{self.world_size})"
        )


def latent_shards(config: LatentShardsConfig) -> LatentShards:
    """Precomputed latents + text embeddings from safetensors shards (seeded shuffle, resumable, rank split)."""
    return LatentShards(config)


COMPONENT = rr.Component(kind="dataset", name="latent_shards", factory=latent_shards, config=LatentShardsConfig)


def open_dataset(path: str | Path, **options: Any) -> LatentShards:
    """A :class:`LatentShards` for ``path`` outside a recipe (tools, tests)."""
    return LatentShards(LatentShardsConfig(path=str(path), **options))
