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


# -- damage: one function per kind of bad input, and the parts of the message that must name it ---------------


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]


def write_members(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add_member(tar, name, data)


def replace_member(path: Path, name: str, data: bytes) -> None:
    write_members(path, [(n, data if n == name else d) for n, d in read_members(path)])


class _Runs:
    """Pickled by ``torch.save``, it asks for ``exec`` when loaded: what weights_only must refuse."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (self.code,))


def code_member(marker: Path) -> bytes:
    """A torch file whose pickle would create ``marker`` if it were ever run."""
    return torch_bytes(_Runs(f"open({str(marker)!r}, 'w').close()"))


def cut_mid_member(root: Path) -> None:
    """shard_000001.tar cut inside sample 4's latent data."""
    path = root / "shard_000001.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("000000004.latent.pt")
    path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])


def cut_at_member_end(root: Path) -> None:
    """shard_000002.tar cut after sample 7's prompt, so it lacks the archive's end (and sample 8)."""
    path = root / "shard_000002.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("000000007.prompt.txt")
    end = member.offset_data + (member.size + 511) // 512 * 512
    path.write_bytes(path.read_bytes()[:end])


def drop_embedding(root: Path) -> None:
    """shard_000003.tar without sample 9's embedding."""
    path = root / "shard_000003.tar"
    write_members(path, [(n, d) for n, d in read_members(path) if n != "000000009.embed.pt"])


def other_latent_shape(root: Path) -> None:
    """shard_000003.tar's sample 11 has a latent with one more frame."""
    latent = torch.zeros(4, 3, 2, 2, dtype=torch.bfloat16)
    replace_member(root / "shard_000003.tar", "000000011.latent.pt", torch_bytes(latent))


def other_embed_dtype(root: Path) -> None:
    """shard_000003.tar's sample 12 has a float32 embedding."""
    replace_member(root / "shard_000003.tar", "000000012.embed.pt", torch_bytes(torch.zeros(6, 8)))


def not_a_tensor(root: Path) -> None:
    """shard_000000.tar's sample 1 latent is a dict of tensors."""
    replace_member(root / "shard_000000.tar", "000000001.latent.pt", torch_bytes({"x": torch.zeros(4, 2, 2, 2)}))


def code_in_member(root: Path) -> None:
    """shard_000000.tar's sample 2 latent is a pickle that calls ``exec`` (creating ``root/../RAN`` if run)."""
    replace_member(root / "shard_000000.tar", "000000002.latent.pt", code_member(root.parent / "RAN"))


#: (name, damage, parts of the one error that must name it): every kind of bad input the index finds.
RELEASE_DAMAGE = [
    ("truncated inside a member", cut_mid_member, ["shard_000001.tar", "truncated", "000000004.latent.pt"]),
    ("truncated after a member", cut_at_member_end, ["shard_000002.tar: truncated", "without the end of the archive"]),
    ("sample missing a member", drop_embedding, ["shard_000003.tar [000000009.embed.pt]: missing"]),
    (
        "latent of another shape",
        other_latent_shape,
        ["shard_000003.tar [000000011.latent.pt]: latent [4, 3, 2, 2] bfloat16, the first sample's", "[4, 2, 2, 2]"],
    ),
    (
        "embedding of another dtype",
        other_embed_dtype,
        ["shard_000003.tar [000000012.embed.pt]: embedding [6, 8] float32", "[6, 8] bfloat16"],
    ),
    ("member not a tensor", not_a_tensor, ["shard_000000.tar [000000001.latent.pt]: holds a dict, not a tensor"]),
    ("code in a member", code_in_member, ["shard_000000.tar [000000002.latent.pt]: refused", "calls __builtin__.exec"]),
]
