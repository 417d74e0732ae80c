"""``rcm convert-data``: the rCM release's tar shards rewritten as latent shards, for the ``latent_shards`` dataset.

The samples are taken in the order ``rcm_tar_shards`` numbers them unshuffled (shards by name, samples in
tar order) and written ``shard_size`` at a time through :class:`LatentShardsWriter`, the writer ``rcm
synth`` uses: output shard ``k`` holds samples ``k·shard_size`` onwards, with ``latents`` and ``text`` in
the stored dtypes, ``text_mask`` (the embedding's non-zero rows), ``prompt_index`` (the sample's number
in that order) and the prompts as captions; the negative prompt's embedding, when given, becomes
``negative.safetensors`` (in the embeddings' dtype). Each shard is written under a temporary name and
renamed, and the index is rewritten after it, so an interrupted conversion leaves complete shards and is
continued by running it again; ``synth.json`` records what the directory was started from (the input's
shard names and sizes, by digest, the shard size, the frames, the negative file's digest) and a rerun
with anything else is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from rcm_plugins.data.latent_shards_format import file_sha256
from rcm_plugins.data.latent_shards_writer import LatentShardsWriter
from rcm_plugins.data.rcm_tar_format import read_negative, torch_dtype
from rcm_plugins.data.shard_stream import text_mask_of

from rcm_registry.errors import UserError
from rcm_registry.protocols import ConversionSummary

if TYPE_CHECKING:
    from rcm_plugins.data.rcm_tar_shards_dataset import RcmTarShardsConfig

#: Recorded as the ``source`` of a converted directory's settings.
SOURCE_FORMAT = "rcm-release-tar-shards"


def convert_release_data(
    config: RcmTarShardsConfig,
    out: Path,
    *,
    shard_size: int = 64,
    max_shards: int | None = None,
    progress: Callable[[str], None] = print,
) -> ConversionSummary:
    """Write the samples of ``config``'s shards (all problems checked first) as latent shards into ``out``."""
    from rcm_plugins.data.rcm_tar_shards_dataset import RcmTarShards

    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if max_shards is not None and max_shards < 0:
        raise UserError(f"--max-shards must be >= 0, got {max_shards}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a directory")
    source = RcmTarShards(attrs.evolve(config, shuffle=False, prefetch=0, split_ranks=False))
    try:
        return _convert(source, out, shard_size, max_shards, progress)
    finally:
        source.close()


def _settings(source: Any, shard_size: int) -> dict[str, Any]:
    listing = "\n".join(f"{scan.path.name} {scan.path.stat().st_size}" for scan in source.index.shards)
    negative = source.config.negative
    return {
        "source": SOURCE_FORMAT,
        "source_shards": len(source.index.shards),
        "source_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "samples": source.total,
        "shard_size": shard_size,
        "frames": source.sample_shape[1],
        "negative_sha256": file_sha256(Path(negative)) if negative is not None else None,
    }


def _convert(
    source: Any, out: Path, shard_size: int, max_shards: int | None, progress: Callable[[str], None]
) -> ConversionSummary:
    writer = LatentShardsWriter(out)
    info = {"converted_from": str(source.where), "source_format": SOURCE_FORMAT, "samples": source.total}
    writer.start(_settings(source, shard_size), info, captions=True)
    negative = source.config.negative
    if negative is not None:
        embed = source.index.embed
        text = read_negative(negative, embed)[0]
        assert text is not None  # the dataset checked the file
        text = text.to(torch_dtype(embed.dtype))
        writer.write_negative(text, text_mask_of(text), prompt="")
    count = math.ceil(source.total / shard_size)
    written = kept = 0
    for k in range(count):
        first = k * shard_size
        ids = torch.arange(first, min(first + shard_size, source.total))
        if writer.has_shard(k, first, len(ids)):
            kept += 1
            progress(f"shard {k + 1}/{count}: {len(ids)} samples, already written")
            continue
        if max_shards is not None and written >= max_shards:
            continue  # later shards an earlier run wrote still go into the index
        rows = source.samples(ids)
        writer.write_shard(
            k,
            first,
            latents=rows["latents"],
            text=rows["text"],
            text_mask=text_mask_of(rows["text"]),
            conditions={},
            captions=source.captions(ids),
        )
        written += 1
        progress(f"shard {k + 1}/{count}: {len(ids)} samples written")
    samples, shards = writer.finish()
    return ConversionSummary(
        written=written, kept=kept, remaining=count - len(writer.entries), samples=samples, shards=shards
    )
