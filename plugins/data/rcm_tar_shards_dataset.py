"""``rcm_tar_shards``: train on the rCM release's synthetic data as it is shipped, tar shards of torch files.

The layout (``shard_NNNNNN.tar`` with ``{index:09d}.latent.pt`` / ``.embed.pt`` / ``.prompt.txt``) and how
it is indexed are in :mod:`rcm_plugins.data.rcm_tar_format`. The shards are read in place: a sample's
two tensors are read at the offsets the index found (a seek and a read each, no unpacking to disk) and
loaded with ``torch.load(weights_only=True)``; each is checked against the index's shape and dtype.

Batches are those of ``latent_shards`` (:mod:`rcm_plugins.data.shard_stream`: seeded order per epoch,
rank split, read-ahead thread, bitwise resume): ``x0`` the latents as float32, ``text`` the embeddings
as float32 (already zero past each prompt: the release pads to 512 tokens), the text mask (with
``mask_key``) the embedding's non-zero rows. The null condition is the ``negative`` file's embedding
(the release's ``umT5_wan_negative_emb.pt``), all zeros, or none (``null_condition``).

Before training, ``rcm validate`` and ``rcm run`` ask the config's :meth:`RcmTarShardsConfig.check_data`,
which indexes every shard and reports every problem at once (the dataset checks again when it is built,
from the same in-memory index). ``rcm convert-data`` writes the same samples as latent shards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import torch
from rcm_plugins.data.latent_shards_format import TensorSpec
from rcm_plugins.data.rcm_tar_format import (
    EMBED,
    EMBED_DIMS,
    KINDS,
    LATENT,
    LATENT_DIMS,
    PROMPT,
    ShardScan,
    TarIndex,
    TarShardError,
    load_tensor,
    read_negative,
    torch_dtype,
)
from rcm_plugins.data.shard_stream import ShardStream, ShardStreamConfig
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import ConversionSummary, DataCheck, SampleShapes


@attrs.define
class RcmTarShardsConfig(ShardStreamConfig):
    """``{use: rcm_tar_shards, path: DIR or GLOB}``: ``path`` a directory of ``shard_*.tar`` files or a glob of
    them (``DIR/shard*.tar``, the release's ``tar_path_pattern``); the other options are every shard
    dataset's (:class:`rcm_plugins.data.shard_stream.ShardStreamConfig`), ``negative`` and ``frames``."""

    #: The negative prompt's umT5 embedding, a torch file of (L, D) or (1, L, D) (the release's
    #: ``umT5_wan_negative_emb.pt``): the null condition with ``null_condition: negative`` or ``auto``.
    negative: str | None = None
    #: Keep the first ``frames`` latent frames of each sample (the release trains Wan2.1 at 480p on the first
    #: 20 of the 21 it stores: its ``state_t``); unset: all of them.
    frames: int | None = attrs.field(default=None, validator=schema.positive)

    def sample_shapes(self) -> SampleShapes:
        """The first sample's latent (C, T, H, W), ``frames`` applied, and embedding (L, D) as ``text``, from the
        shards' index (tar headers and torch pickles; a TarShardError when there are no shards to read)."""
        index = TarIndex.build(self.path)
        condition: dict[str, tuple[int | None, ...]] = {}
        if index.embed is not None:
            condition["text"] = tuple(index.embed.shape)
            if self.mask_key is not None:
                condition[self.mask_key] = tuple(index.embed.shape[:1])
        x0 = None if index.latent is None else tuple(index.latent.shape)
        if x0 is not None and self.frames is not None and len(x0) == LATENT_DIMS:
            x0 = (x0[0], min(self.frames, x0[1] or 0), *x0[2:])
        return SampleShapes(x0=x0, condition=condition, source=index.source)

    def check_data(self) -> DataCheck:
        """Every problem of the shards and of ``negative`` (read from headers; see the format's docs)."""
        try:
            index = TarIndex.build(self.path)
        except TarShardError as exc:
            return DataCheck(problems=[str(exc)])
        problems = list(index.problems) + _option_problems(self, index)
        note = index.skipped_note()
        return DataCheck(problems=problems, notes=[note] if note else [])

    def convert_data(
        self, out: Path, *, shard_size: int, max_shards: int | None, progress: Callable[[str], None]
    ) -> ConversionSummary:
        """These shards as a latent-shard directory (:mod:`rcm_plugins.data.rcm_tar_convert`)."""
        from rcm_plugins.data.rcm_tar_convert import convert_release_data

        return convert_release_data(self, out, shard_size=shard_size, max_shards=max_shards, progress=progress)


def _option_problems(config: RcmTarShardsConfig, index: TarIndex) -> list[str]:
    problems = []
    if config.negative is not None:
        problems += read_negative(config.negative, index.embed)[1]
    elif config.null_condition == "negative":
        problems.append(
            f"{index.source}: null_condition: negative needs the negative-prompt embedding file (negative: PATH)"
        )
    latent = index.latent
    if config.frames is not None and latent is not None and len(latent.shape) == LATENT_DIMS:
        if config.frames > latent.shape[1]:
            problems.append(f"{index.source}: frames: {config.frames}, but the latents have {latent.shape[1]} frames")
    return problems


@attrs.define
class _Layout:
    """What a reader needs, without a reference back to the dataset (so a prefetch thread does not keep an
    abandoned dataset alive)."""

    shards: list[ShardScan]
    starts: Tensor
    ends: Tensor
    latent: TensorSpec  # as stored, without a batch dimension
    embed: TensorSpec
    frames: int | None

    def locate(self, i: int) -> tuple[ShardScan, int]:
        shard = int(torch.searchsorted(self.ends, torch.tensor(i), right=True))
        return self.shards[shard], i - int(self.starts[shard])


def _read(file: BinaryIO, scan: ShardScan, row: int, kind: str) -> bytes:
    offset, size = (int(v) for v in scan.members[row, KINDS.index(kind)])
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise TarShardError(f"{scan.path} [{scan.member(row, kind)}]: truncated since it was indexed")
    return data


class _Reader:
    """Reads samples with plain file reads at the indexed offsets (one reader per thread)."""

    def __init__(self, layout: _Layout, open_files: int) -> None:
        self.layout = layout
        self.open_files = open_files
        self.files: OrderedDict[Path, BinaryIO] = OrderedDict()

    def _file(self, path: Path) -> BinaryIO:
        file = self.files.get(path)
        if file is not None:
            self.files.move_to_end(path)
            return file
        try:
            file = self.files[path] = open(path, "rb")
        except OSError as exc:
            raise TarShardError(f"{path}: cannot open ({exc})") from None
        while len(self.files) > self.open_files:
            self.files.popitem(last=False)[1].close()
        return file

    def _tensor(self, scan: ShardScan, row: int, kind: str, spec: TensorSpec, dims: int) -> Tensor:
        where = f"{scan.path} [{scan.member(row, kind)}]"
        tensor = load_tensor(_read(self._file(scan.path), scan, row, kind), where)
        if tensor.dim() == dims + 1 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != torch_dtype(spec.dtype):
            raise TarShardError(
                f"{where}: {list(tensor.shape)} {tensor.dtype} since it was indexed as {list(spec.shape)} {spec.dtype}"
            )
        return tensor

    def rows(self, ids: Tensor) -> dict[str, Tensor]:
        layout = self.layout
        shape = layout.latent.shape
        if layout.frames is not None:
            shape = (shape[0], layout.frames, *shape[2:])
        latents = torch.empty((len(ids), *shape), dtype=torch_dtype(layout.latent.dtype))
        text = torch.empty((len(ids), *layout.embed.shape), dtype=torch_dtype(layout.embed.dtype))
        for i, sample in enumerate(ids.tolist()):
            scan, row = layout.locate(sample)
            latent = self._tensor(scan, row, LATENT, layout.latent, LATENT_DIMS)
            latents[i] = latent[:, : shape[1]]
            text[i] = self._tensor(scan, row, EMBED, layout.embed, EMBED_DIMS)
        return {"latents": latents, "text": text}

    def prompt(self, sample: int) -> str:
        scan, row = self.layout.locate(sample)
        return _read(self._file(scan.path), scan, row, PROMPT).decode("utf-8", errors="replace")

    def close(self) -> None:
        while self.files:
            self.files.popitem()[1].close()


class RcmTarShards(ShardStream):
    """The rCM release's tar shards, read in place: shuffled, resumable, split across ranks."""

    name = "rcm_tar_shards"
    error = TarShardError

    def __init__(self, config: RcmTarShardsConfig) -> None:
        self.config = config
        self.index = TarIndex.build(config.path)
        self.where = config.path
        problems = _option_problems(config, self.index)
        if problems:
            self.index.problems += problems
        self.index.check()
        assert self.index.latent is not None and self.index.embed is not None  # else check() raised
        negative = read_negative(config.negative, self.index.embed)[0] if config.negative is not None else None
        self.null_text, self.null_mask = self._null(negative, self.index.embed)
        latent = self.index.latent
        frames = config.frames if config.frames is not None else latent.shape[1]
        self.sample_shape: tuple[int, ...] = (latent.shape[0], frames, *latent.shape[2:])
        self._start_stream([len(scan.keys) for scan in self.index.shards])
        self._layout = _Layout(self.index.shards, self.starts, self.ends, latent, self.index.embed, config.frames)

    def _null(self, negative: Tensor | None, embed: TensorSpec) -> tuple[Tensor | None, Tensor | None]:
        mode = self.config.null_condition
        if mode in ("negative", "auto") and negative is not None:
            return negative.float(), None
        if mode == "zeros":
            return torch.zeros(1, *embed.shape), torch.zeros(1, embed.shape[0], dtype=torch.bool)
        return None, None

    def _new_reader(self) -> _Reader:
        return _Reader(self._layout, open_files=self.config.shuffle_window + 1)

    def samples(self, ids: Tensor) -> dict[str, Tensor]:
        """The stored ``latents`` (``frames`` kept) and ``text`` of global sample ids, in their stored dtypes."""
        return self._own_reader().rows(ids)

    def captions(self, ids: Tensor) -> list[str]:
        """The prompts of global sample ids."""
        reader = self._own_reader()
        assert isinstance(reader, _Reader)
        return [reader.prompt(i) for i in ids.tolist()]

    def keys(self, ids: Tensor) -> list[str]:
        """The sample keys (member names without their kind) of global sample ids."""
        return [scan.keys[row] for scan, row in (self._layout.locate(i) for i in ids.tolist())]

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "frames": self.sample_shape[1]}


def rcm_tar_shards(config: RcmTarShardsConfig) -> RcmTarShards:
    """The rCM release's tar shards (latent, umT5 embedding, prompt per sample), read in place."""
    return RcmTarShards(config)


COMPONENT = rr.Component(kind="dataset", name="rcm_tar_shards", factory=rcm_tar_shards, config=RcmTarShardsConfig)


def open_tar_dataset(path: str | Path, **options: Any) -> RcmTarShards:
    """An :class:`RcmTarShards` for ``path`` outside a recipe (tools, tests, ``rcm convert-data``)."""
    return RcmTarShards(RcmTarShardsConfig(path=str(path), **options))
