"""Tiny datasets in the rCM release's tar-shard layout (:mod:`rcm_plugins.data.rcm_tar_format`), for tests.

Written the way the release's builder writes them: a ``tarfile.TarInfo`` per member with the bytes of
``torch.save`` (latent (C, T, H, W) and embedding (L, D), bfloat16) or of the UTF-8 prompt.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from torch import Tensor


@attrs.frozen
class ReleaseSample:
    index: int
    latent: Tensor
    embed: Tensor
    prompt: str


def torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def release_sample(
    index: int, latent_shape: Sequence[int] = (4, 2, 2, 2), embed_shape: Sequence[int] = (6, 8)
) -> ReleaseSample:
    """Sample ``index``: its latent holds ``index`` plus a small ramp (so values differ inside a sample), its
    embedding ``index + 0.5`` on the first ``1 + index % L`` tokens and zeros after them (the release's padding)."""
    ramp = torch.arange(int(torch.tensor(latent_shape).prod())).reshape(*latent_shape) / 64
    length = embed_shape[0]
    embed = torch.zeros(*embed_shape)
    embed[: 1 + index % length] = index + 0.5
    return ReleaseSample(index, (index + ramp).to(torch.bfloat16), embed.to(torch.bfloat16), f"prompt {index}: a fox")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_release_shard(path: Path, samples: Sequence[ReleaseSample]) -> Path:
    """One shard: per sample ``{index:09d}.latent.pt``, ``.embed.pt`` and ``.prompt.txt``, in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            add_member(tar, f"{s.index:09d}.latent.pt", torch_bytes(s.latent))
            add_member(tar, f"{s.index:09d}.embed.pt", torch_bytes(s.embed))
            add_member(tar, f"{s.index:09d}.prompt.txt", s.prompt.encode("utf-8"))
    return path


def write_release_dataset(
    root: Path,
    counts: Sequence[int] = (3, 4, 2, 5),
    *,
    latent_shape: Sequence[int] = (4, 2, 2, 2),
    embed_shape: Sequence[int] = (6, 8),
) -> list[ReleaseSample]:
    """``shard_000000.tar`` ... holding ``counts[k]`` samples each, numbered on from 0; returns the samples in order."""
    samples: list[ReleaseSample] = []
    for k, n in enumerate(counts):
        shard = [release_sample(len(samples) + i, latent_shape, embed_shape) for i in range(n)]
        write_release_shard(root / f"shard_{k:06d}.tar", shard)
        samples += shard
    return samples
