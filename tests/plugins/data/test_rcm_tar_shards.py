"""rcm_tar_shards: the release's tensors come back as written, the stream resumes and splits like latent_shards,
and every kind of bad input is named by shard and member, all at once, without running a pickle."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from rcm_plugins.data.rcm_tar_format import TarIndex, TarShardError, load_tensor, read_tensor_spec, scan_shard
from rcm_plugins.data.rcm_tar_shards_dataset import RcmTarShardsConfig, open_tar_dataset

import rcm_registry as rr
from rcm_registry.testing.dataset_contract import same_batch
from rcm_registry.testing.rcm_release_tars import (
    RELEASE_DAMAGE,
    ReleaseSample,
    add_member,
    code_member,
    read_members,
    release_sample,
    torch_bytes,
    write_members,
    write_release_dataset,
    write_release_shard,
)

COUNTS = (3, 4, 2, 5)  # uneven on purpose


@pytest.fixture
def written(tmp_path: Path) -> list[ReleaseSample]:
    return write_release_dataset(tmp_path / "data", COUNTS)


@pytest.fixture
def data(tmp_path: Path, written: list[ReleaseSample]) -> Path:
    return tmp_path / "data"


def ids_of(batch: rr.protocols.Batch) -> list[int]:
    return batch.x0[:, 0, 0, 0, 0].round().long().tolist()  # a sample's latent starts with its index


def take(ds, batches: int, size: int) -> list[rr.protocols.Batch]:
    g = torch.Generator()
    return [ds.next_batch(size, g) for _ in range(batches)]


def test_registered_and_built_from_a_recipe_section(data: Path) -> None:
    ds = rr.registry().build("dataset", "rcm_tar_shards", path=str(data), prefetch=0)
    assert ds.sample_shape == (4, 2, 2, 2)
    assert ds.total == sum(COUNTS)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_hold_the_tensors_written(data: Path, written: list[ReleaseSample], prefetch: int) -> None:
    ds = open_tar_dataset(data, prefetch=prefetch, shuffle=False, mask_key="text_mask")
    batch = ds.next_batch(len(written), torch.Generator())
    assert batch.x0.dtype == torch.float32 and batch.condition["text"].dtype == torch.float32
    for i, sample in enumerate(written):
        assert torch.equal(batch.x0[i], sample.latent.float())
        assert torch.equal(batch.condition["text"][i], sample.embed.float())
        tokens = 1 + sample.index % sample.embed.shape[0]
        assert batch.condition["text_mask"][i].tolist() == [True] * tokens + [False] * (6 - tokens)
    assert batch.null_condition is None  # auto, and no negative file
    assert ds.captions(torch.tensor([0, 13])) == [written[0].prompt, written[13].prompt]
    assert ds.keys(torch.tensor([5])) == ["000000005"]
    ds.close()


def test_shuffled_epochs_are_permutations_of_the_written_samples(data: Path) -> None:
    n = sum(COUNTS)
    ds = open_tar_dataset(data, prefetch=2, shuffle_window=2, seed=1)
    flat = [i for b in take(ds, n, 2) for i in ids_of(b)]  # two epochs in batches of 2, across the boundary
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:]) == list(range(n))
    assert flat[:n] != flat[n:] and flat[:n] != list(range(n))
    ds.close()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_gives_bitwise_the_batches_of_an_uninterrupted_run(data: Path, prefetch: int) -> None:
    whole = take(open_tar_dataset(data, prefetch=prefetch), 9, 4)
    first = open_tar_dataset(data, prefetch=prefetch)
    head = take(first, 4, 4)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps is plain data
    first.close()
    resumed = open_tar_dataset(data, prefetch=prefetch)
    take(resumed, 2, 4)  # a read-ahead thread already running must not leak into the resumed stream
    resumed.load_state_dict(state)
    rest = take(resumed, 5, 4)
    assert all(same_batch(a, b) for a, b in zip(head + rest, whole, strict=True))
    resumed.close()


def test_resume_refuses_other_shards_or_frames(tmp_path: Path, data: Path) -> None:
    ds = open_tar_dataset(data, prefetch=0)
    take(ds, 1, 2)
    fewer = open_tar_dataset(write_release_dataset(tmp_path / "b", (3, 4)) and tmp_path / "b", prefetch=0)
    with pytest.raises(TarShardError, match="samples: 14 then, 7 now"):
        fewer.load_state_dict(ds.state_dict())
    with pytest.raises(TarShardError, match="frames: 2 then, 1 now"):
        open_tar_dataset(data, prefetch=0, frames=1).load_state_dict(ds.state_dict())


def test_ranks_are_disjoint_and_cover_every_sample(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_release_dataset(data, (3, 4, 5))  # 12 samples, 4 a rank
    for epoch in (0, 1):
        parts = [
            open_tar_dataset(data, prefetch=0, split_ranks=True, rank=r, world_size=3).order(epoch).tolist()
            for r in range(3)
        ]
        assert [len(p) for p in parts] == [4, 4, 4]
        assert sorted(i for p in parts for i in p) == list(range(12))
    rank1 = open_tar_dataset(data, prefetch=0, split_ranks=True, rank=1, world_size=3)
    assert ids_of(rank1.next_batch(4, torch.Generator())) == rank1.order(0).tolist()


def test_null_condition_from_the_negative_file_or_zeros(tmp_path: Path, data: Path) -> None:
    negative = torch.full((6, 8), -1.0, dtype=torch.bfloat16)
    for name, value in (("neg.pt", negative), ("neg1.pt", negative[None])):  # (L, D) or (1, L, D)
        (tmp_path / name).write_bytes(torch_bytes(value))
        batch = open_tar_dataset(data, prefetch=0, negative=str(tmp_path / name)).next_batch(3, torch.Generator())
        assert batch.null_condition is not None and batch.null_condition["text"].shape == (3, 6, 8)
        assert torch.all(batch.null_condition["text"] == -1.0)
    zeros = open_tar_dataset(data, prefetch=0, null_condition="zeros").next_batch(2, torch.Generator()).null_condition
    assert zeros is not None and torch.all(zeros["text"] == 0) and zeros["text"].shape == (2, 6, 8)
    with_file = open_tar_dataset(data, prefetch=0, negative=str(tmp_path / "neg.pt"), null_condition="none")
    assert with_file.next_batch(2, torch.Generator()).null_condition is None
    with pytest.raises(TarShardError, match=r"null_condition: negative needs the negative-prompt embedding file"):
        open_tar_dataset(data, null_condition="negative")
    (tmp_path / "short.pt").write_bytes(torch_bytes(torch.zeros(5, 8)))
    with pytest.raises(TarShardError, match=r"short\.pt: negative-prompt embedding \[5, 8\], the shards' .* \[6, 8\]"):
        open_tar_dataset(data, negative=str(tmp_path / "short.pt"))


def test_frames_keeps_the_first_latent_frames(data: Path, written: list[ReleaseSample]) -> None:
    ds = open_tar_dataset(data, prefetch=0, shuffle=False, frames=1)
    assert ds.sample_shape == (4, 1, 2, 2)
    batch = ds.next_batch(2, torch.Generator())
    assert torch.equal(batch.x0[1], written[1].latent[:, :1].float())
    with pytest.raises(TarShardError, match="frames: 3, but the latents have 2 frames"):
        open_tar_dataset(data, frames=3)


def test_a_glob_a_merged_layout_and_a_repeated_member(tmp_path: Path) -> None:
    root = tmp_path / "d"
    samples = [release_sample(i) for i in range(3)]
    write_release_shard(root / "shard_000000.tar", samples[:2])
    # the release's merger: members under a folder of their key; sample 2's latent first written wrong, then again
    with tarfile.open(root / "shard-00001.tar", "w") as tar:
        key = "000000002/000000002"
        add_member(tar, f"{key}.latent.pt", torch_bytes(torch.zeros(1, 1)))
        add_member(tar, f"{key}.latent.pt", torch_bytes(samples[2].latent))
        add_member(tar, f"{key}.embed.pt", torch_bytes(samples[2].embed))
        add_member(tar, f"{key}.prompt.txt", samples[2].prompt.encode())
    assert open_tar_dataset(root, prefetch=0).total == 3
    ds = open_tar_dataset(str(root / "shard-*.tar"), prefetch=0, shuffle=False)
    assert ds.total == 1 and ds.keys(torch.tensor([0])) == ["000000002/000000002"]
    assert torch.equal(ds.next_batch(1, torch.Generator()).x0[0], samples[2].latent.float())


def test_in_progress_shards_are_skipped_and_never_read(data: Path) -> None:
    (data / "shard_000009.tar.tmp").write_bytes(b"half a shard")  # would be a corrupt tar if it were read
    config = RcmTarShardsConfig(path=str(data))
    found = config.check_data()
    assert found.problems == []
    assert found.notes == [f"{data}: skipped 1 shard(s) still being written (shard_000009.tar.tmp; never read)"]
    assert open_tar_dataset(data, prefetch=0).total == sum(COUNTS)
    assert "shard_000009" not in "".join(TarIndex.build(str(data) + "/shard_*.tar").problems)


@pytest.mark.parametrize(
    ("damage", "expected"), [(f, e) for _, f, e in RELEASE_DAMAGE], ids=[n for n, _, _ in RELEASE_DAMAGE]
)
def test_each_kind_of_bad_input_is_named(data: Path, damage, expected: list[str]) -> None:
    damage(data)
    with pytest.raises(TarShardError) as info:
        open_tar_dataset(data)
    for part in expected:
        assert part in str(info.value), str(info.value)
    assert RcmTarShardsConfig(path=str(data)).check_data().problems  # the same, before training


def test_every_problem_is_reported_at_once(tmp_path: Path, data: Path) -> None:
    for _, damage, _ in RELEASE_DAMAGE:
        damage(data)
    (data / "shard_000005.tar.tmp").write_bytes(b"")
    with pytest.raises(TarShardError) as info:
        open_tar_dataset(data)
    message = str(info.value)
    for _, _, expected in RELEASE_DAMAGE:
        for part in expected:
            assert part in message, message
    assert "skipped 1 shard(s) still being written" in message
    assert not (tmp_path / "RAN").exists()  # the exec in a member never ran


def test_a_corrupt_header_between_members(data: Path) -> None:
    path = data / "shard_000001.tar"
    with tarfile.open(path) as tar:
        second = tar.getmember("000000004.latent.pt").offset  # the header of sample 4's first member
    raw = bytearray(path.read_bytes())
    raw[second : second + 512] = b"\x01" * 512
    path.write_bytes(bytes(raw))
    problems = scan_shard(path).problems
    assert problems == [f"{path}: corrupt tar header at byte {second} (members after it cannot be read)"]


def test_not_a_tar_and_no_shards(tmp_path: Path, data: Path) -> None:
    (data / "shard_000000.tar").write_bytes(b"plain text, not a tar" * 40)
    assert "shard_000000.tar: not a tar file" in TarIndex.build(str(data)).problems[0]
    (tmp_path / "empty").mkdir()
    assert TarIndex.build(str(tmp_path / "empty")).problems == [f"{tmp_path / 'empty'}: no complete shards (*.tar)"]
    with pytest.raises(TarShardError, match="no such directory, tar file or glob"):
        open_tar_dataset(tmp_path / "nowhere")


def test_reading_refuses_code_the_index_did_not_see(tmp_path: Path, data: Path) -> None:
    """A latent overwritten, after indexing, by a pickle with code: torch.load(weights_only) refuses it, named."""
    from rcm_registry.testing.rcm_release_tars import _Runs

    ds = open_tar_dataset(data, prefetch=0, shuffle=False)
    path = data / "shard_000000.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("000000000.latent.pt")
    evil = io.BytesIO()  # the pre-zip format reads its pickle from the front, so padding after it is never seen
    torch.save(_Runs(f"open({str(tmp_path / 'RAN')!r}, 'w').close()"), evil, _use_new_zipfile_serialization=False)
    assert len(evil.getvalue()) <= member.size
    with open(path, "r+b") as f:
        f.seek(member.offset_data)
        f.write(evil.getvalue().ljust(member.size, b"\0"))
    with pytest.raises(TarShardError, match=r"shard_000000\.tar \[000000000\.latent\.pt\]: refused: its pickle calls"):
        ds.next_batch(1, torch.Generator())
    assert not (tmp_path / "RAN").exists()


def test_a_shard_cut_during_training_is_an_error_naming_it(data: Path) -> None:
    ds = open_tar_dataset(data, prefetch=2, shuffle=False)
    take(ds, 1, 2)  # samples 0, 1
    last = data / "shard_000003.tar"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(TarShardError, match=r"shard_000003\.tar \[000000009\.latent\.pt\]: truncated since"):
        take(ds, 4, 2)
    ds.close()


@pytest.mark.parametrize(
    "value",
    [
        torch.zeros(16, 3, 4, 6, dtype=torch.bfloat16),
        torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)[:, 1:],  # a view: the whole storage is saved
        torch.ones(5, dtype=torch.int64),
        torch.zeros(3, 2, dtype=torch.bool).t(),
        torch.tensor(2.5, dtype=torch.float16),
    ],
)
def test_the_header_reader_agrees_with_torch_load(tmp_path: Path, value: torch.Tensor) -> None:
    for legacy in (False, True):
        buffer = io.BytesIO()
        torch.save(value, buffer, _use_new_zipfile_serialization=not legacy)
        data = b"padding" + buffer.getvalue() + b"tail"
        loaded = load_tensor(buffer.getvalue(), "x")
        spec = read_tensor_spec(io.BytesIO(data), 7, len(buffer.getvalue()), "x")
        assert (spec.dtype, spec.shape) == (str(loaded.dtype).removeprefix("torch."), tuple(loaded.shape))
        assert (spec.dtype, spec.shape) == (str(value.dtype).removeprefix("torch."), tuple(value.shape))


def test_load_tensor_names_what_it_refuses(tmp_path: Path) -> None:
    with pytest.raises(TarShardError, match=r"^m: refused: its pickle calls exec"):
        load_tensor(code_member(tmp_path / "RAN"), "m")
    with pytest.raises(TarShardError, match=r"^m: not a readable torch file"):
        load_tensor(b"\x00" * 64, "m")
    with pytest.raises(TarShardError, match=r"^m: holds a list, not a tensor"):
        load_tensor(torch_bytes([torch.zeros(1)]), "m")
    assert not (tmp_path / "RAN").exists()


def test_the_index_is_read_once_per_file_version(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rcm_plugins.data.rcm_tar_format as fmt

    TarIndex.build(str(data))
    calls: list[Path] = []
    real = fmt.scan_shard
    monkeypatch.setattr(fmt, "scan_shard", lambda p: calls.append(p) or real(p))
    TarIndex.build(str(data))
    assert calls == []
    write_members(data / "shard_000002.tar", read_members(data / "shard_000002.tar")[:3])  # sample 7 only
    assert TarIndex.build(str(data)).total == sum(COUNTS) - 1
    assert calls == [data / "shard_000002.tar"]
