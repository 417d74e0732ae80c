"""What the datasets reading samples from shards share: the epoch order, the rank split, read-ahead in a
thread, the resume state and the batch a row set becomes (``latent_shards``, ``rcm_tar_shards``).

Order of the samples. Epoch ``e`` has its own permutation, a function of ``(dataset name, seed, e)`` only:
the shards are shuffled, cut into windows of ``shuffle_window`` shards, and the samples of each window
shuffled together. ``next_batch(B)`` returns the next ``B`` samples; a batch that runs past the end of an
epoch continues into the next one.

Ranks. By default every process reads the same stream, which is what the engine's data parallelism
wants (it draws the global batch on every rank and keeps each rank's rows). With ``split_ranks: true``,
rank ``r`` of ``W`` (from the config, else torchrun's ``RANK``/``WORLD_SIZE``) takes the ``r``-th of ``W``
equal contiguous slices of each epoch's order instead (the ``N mod W`` samples left over change from
epoch to epoch): each rank reads about 1/W of the shards and all ranks make the same number of batches.

The read position (epoch, offset) is the whole state: a resumed run continues with exactly the batches
an uninterrupted one would have seen. The engine's generator is not used for the order, so the stream
does not depend on what else draws random numbers.

A dataset subclasses :class:`ShardStream`: it finds its shards and their sample counts, calls
:meth:`ShardStream._start_stream`, and supplies a :class:`RowReader` (:meth:`ShardStream._new_reader`)
that returns the stored tensors of global sample ids under the keys of
:mod:`rcm_plugins.data.latent_shards_format` (``latents``, ``text``, optional ``text_mask`` and ``cond.NAME``).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import attrs
import torch
from torch import Tensor

from rcm_registry import schema
from rcm_registry.conditions import COND_PREFIX
from rcm_registry.errors import UserError
from rcm_registry.protocols import Batch, Condition

NullMode = Literal["auto", "negative", "zeros", "none"]
Position = tuple[int, int]  # (epoch, offset into this rank's order of that epoch)


@attrs.define
class ShardStreamConfig:
    """The options every shard dataset has (its own config adds the rest); see the module docs."""

    #: Where the shards are (what exactly: the dataset's docs).
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
    #: Null condition for classifier-free guidance: ``negative`` (the dataset's negative-prompt embedding;
    #: an error when there is none), ``zeros`` (an all-zero text embedding), ``none``, or ``auto`` (the
    #: negative prompt when there is one, else none).
    #: (``null_condition``: a key named ``null`` would read as YAML's null.)
    null_condition: NullMode = "auto"
    #: Also pass the text mask to the network under this condition key (Wan and Cosmos take none: their
    #: embeddings are already zero past each prompt).
    mask_key: str | None = None


def resolve_rank(config: ShardStreamConfig, name: str, error: type[UserError]) -> tuple[int, int]:
    """(rank, world size) of this process's part of the stream: (0, 1) unless ``split_ranks``."""
    if not config.split_ranks:
        return 0, 1

    def env(variable: str, default: int) -> int:
        raw = os.environ.get(variable)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise error(f"{name}: environment variable {variable}={raw!r} is not an integer") from None

    world = config.world_size if config.world_size is not None else env("WORLD_SIZE", 1)
    rank = config.rank if config.rank is not None else env("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise error(f"{name}: rank {rank} is not in [0, world_size={world})")
    return rank, world


class RowReader(Protocol):
    """Reads stored rows of a dataset (one reader per thread: file handles are not shared)."""

    def rows(self, ids: Tensor) -> dict[str, Tensor]:
        """The stored tensors of global sample ids, stacked in the order given."""
        ...

    def close(self) -> None: ...


class _Failure:
    """An exception raised in the prefetch thread, handed to the training thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Gone(Exception):
    """The dataset a prefetch thread works for was garbage-collected."""


class Prefetcher:
    """A background thread producing batches from a start position into a bounded queue."""

    def __init__(
        self,
        produce: Callable[[Position, int], tuple[Batch, Position]],
        start: Position,
        batch_size: int,
        depth: int,
        name: str,
    ) -> None:
        self.start = start
        self.batch_size = batch_size
        self.name = name
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self._produce = produce
        self.thread = threading.Thread(target=self._run, name=f"{name}-prefetch", daemon=True)
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
                    stopped = f"{self.name}: the prefetch thread stopped without a batch or an error"
                    raise RuntimeError(stopped) from None
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


def text_mask_of(text: Tensor) -> Tensor:
    """True for the tokens of an embedding that is zero past each prompt's length (rows not all zero)."""
    return text.abs().amax(-1) > 0


class ShardStream:
    """The stream part of a shard dataset: order, read-ahead, batches, conditions, state (module docs).

    A subclass sets :attr:`name` and :attr:`error`, finds its shards, sets :attr:`null_text` /
    :attr:`null_mask` and calls :meth:`_start_stream` with each shard's sample count.
    """

    #: The component's name: in messages, the prefetch thread's name and the seed of the epoch order.
    name: ClassVar[str]
    #: The UserError subclass of this dataset's problems.
    error: ClassVar[type[UserError]]

    config: ShardStreamConfig
    #: Where the data is, for messages.
    where: str
    #: Shape of one sample (the ``Dataset`` protocol's).
    sample_shape: tuple[int, ...]
    #: The null condition's text (1, L, D) and mask (1, L), or None.
    null_text: Tensor | None = None
    null_mask: Tensor | None = None

    def _start_stream(self, counts: Sequence[int]) -> None:
        self.rank, self.world_size = resolve_rank(self.config, self.name, self.error)
        counts_t = torch.tensor(list(counts), dtype=torch.int64)
        self.ends = torch.cumsum(counts_t, 0)
        self.starts = self.ends - counts_t
        self.total = int(self.ends[-1])
        self.per_rank = self.total // self.world_size
        if self.per_rank == 0:
            raise self.error(f"{self.where}: {self.total} samples cannot feed {self.world_size} ranks")
        self.epoch = 0
        self.offset = 0
        self._orders: OrderedDict[int, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._worker: Prefetcher | None = None
        self._reader: RowReader | None = None  # the training thread's; made on first use

    def _own_reader(self) -> RowReader:
        if self._reader is None:
            self._reader = self._new_reader()
        return self._reader

    def _new_reader(self) -> RowReader:
        raise NotImplementedError

    def shard_of(self, ids: Tensor) -> Tensor:
        """The shard of each global sample id."""
        return torch.searchsorted(self.ends, ids, right=True)

    # -- order ------------------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int) -> torch.Generator:
        digest = hashlib.sha256(f"{self.name}:{self.config.seed}:{epoch}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def order(self, epoch: int) -> Tensor:
        """This rank's global sample ids for ``epoch`` (length ``total // world_size``)."""
        with self._lock:  # the prefetch thread and the training thread both ask
            cached = self._orders.get(epoch)
            if cached is not None:
                return cached
            if self.config.shuffle:
                g = self._epoch_generator(epoch)
                shard_order = torch.randperm(len(self.ends), generator=g).tolist()
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

    def _ids(self, position: Position, batch_size: int) -> tuple[Tensor, Position]:
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
            condition[key] = (mask if mask is not None else text_mask_of(rows["text"])).bool()
        null: Condition | None = None
        if self.null_text is not None:
            null = {"text": self.null_text.expand(b, -1, -1), **extras}
            if key is not None:
                nm = self.null_mask if self.null_mask is not None else text_mask_of(self.null_text)
                null[key] = nm.expand(b, -1)
        return Batch(x0=rows["latents"].float(), condition=condition, null_condition=null)

    def _produce(self, position: Position, batch_size: int, reader: RowReader) -> tuple[Batch, Position]:
        ids, position = self._ids(position, batch_size)
        return self._assemble(reader.rows(ids)), position

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        position = (self.epoch, self.offset)
        if self.config.prefetch == 0:
            batch, (self.epoch, self.offset) = self._produce(position, batch_size, self._own_reader())
            return batch
        worker = self._worker
        if worker is None or worker.batch_size != batch_size:
            self.close()
            # The worker gets its own reader (file handles are not shared between threads) and only a weak
            # reference to the dataset, so that dropping the dataset ends the thread.
            reader = self._new_reader()
            ref = weakref.ref(self)

            def produce(pos: Position, size: int) -> tuple[Batch, Position]:
                dataset = ref()
                if dataset is None:
                    raise _Gone
                return dataset._produce(pos, size, reader)

            worker = self._worker = Prefetcher(produce, position, batch_size, self.config.prefetch, self.name)
        try:
            batch = worker.get()
        except BaseException:
            self.close()  # the next call starts again from the same position
            raise
        _, (self.epoch, self.offset) = self._ids(position, batch_size)
        return batch

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        ids = torch.randint(self.total, (n,), generator=generator)
        batch = self._assemble(self._own_reader().rows(ids))
        return batch.condition, batch.null_condition

    # -- state ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """What must not change between a checkpoint and its resume for the stream to be the same."""
        return {
            "samples": self.total,
            "shards": len(self.ends),
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
            raise self.error(
                f"{self.name} {self.where}: the dataset or its split changed since the checkpoint, so the "
                "resumed run would not see the batches it would have seen (" + "; ".join(changed) + ")"
            )
        self.close()
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def close(self) -> None:
        """Stop the prefetch thread (it is restarted by the next ``next_batch``)."""
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is not None:
            worker.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.where}, {self.total} samples in {len(self.ends)} shards, "
            f"sample {list(self.sample_shape)}, rank {self.rank}/{self.world_size})"
        )
