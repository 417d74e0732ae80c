"""latent_shards: order, resume, rank split, null condition, and every kind of damaged shard named."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from rcm_plugins.data.latent_shards_dataset import open_dataset
from rcm_plugins.data.latent_shards_format import (
    NEGATIVE_NAME,
    ShardError,
    ShardIndex,
    TensorSpec,
    read_header,
    write_shard,
)
from safetensors.torch import save_file

import rcm_registry as rr

SHAPE = (4, 2, 2, 2)
TEXT = (5, 6)
COUNTS = (3, 4, 2, 5)  # uneven on purpose


def make_dataset(root: Path, counts: tuple[int, ...] = COUNTS, *, negative: bool = True, extra: bool = False) -> Path:
    """Shards whose latents hold their global sample id in every element (so a batch says which samples)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    first = 0
    for k, n in enumerate(counts):
        ids = torch.arange(first, first + n)
        tensors = {
            "latents": ids.view(-1, 1, 1, 1, 1).expand(n, *SHAPE).to(torch.bfloat16),
            "text": (ids.view(-1, 1, 1) + 0.5).expand(n, *TEXT).to(torch.bfloat16).clone(),
            "text_mask": torch.ones(n, TEXT[0], dtype=torch.bool),
            "prompt_index": ids.clone(),
        }
        tensors["text"][:, -1] = 0  # padding
        tensors["text_mask"][:, -1] = False
        if extra:
            tensors["cond.image"] = ids.view(-1, 1).expand(n, 3).float().clone()
        entries.append(write_shard(root / f"shard-{k:06d}.safetensors", tensors, [f"prompt {i}" for i in ids.tolist()]))
        first += n
    specs = {
        "latents": TensorSpec("bfloat16", SHAPE),
        "text": TensorSpec("bfloat16", TEXT),
        "text_mask": TensorSpec("bool", TEXT[:1]),
        "prompt_index": TensorSpec("int64", ()),
    }
    if extra:
        specs["cond.image"] = TensorSpec("float32", (3,))
    if negative:
        save_file(
            {
                "text": torch.full((1, *TEXT), -1.0).to(torch.bfloat16),
                "text_mask": torch.ones(1, TEXT[0], dtype=torch.bool),
            },
            str(root / NEGATIVE_NAME),
        )
    index = ShardIndex(
        root=root, tensors=specs, shards=entries, captions=True, negative=NEGATIVE_NAME if negative else None
    )
    index.write()
    return root


def ids_of(batch: rr.protocols.Batch) -> list[int]:
    return batch.x0[:, 0, 0, 0, 0].round().long().tolist()


def take(ds, batches: int, size: int) -> list[list[int]]:
    g = torch.Generator()
    return [ids_of(ds.next_batch(size, g)) for _ in range(batches)]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def test_registered_and_built_from_a_recipe_section(data: Path) -> None:
    ds = rr.registry().build("dataset", "latent_shards", path=str(data), prefetch=0)
    assert ds.sample_shape == SHAPE
    assert ds.total == sum(COUNTS)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_each_epoch_is_a_permutation_and_epochs_differ(data: Path, prefetch: int) -> None:
    n = sum(COUNTS)
    ds = open_dataset(data, prefetch=prefetch, shuffle_window=2)
    flat = [i for b in take(ds, n, 2) for i in b]  # 2 epochs of 14, in batches of 2 across the boundary
    first, second = flat[:n], flat[n:]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert first != second
    assert first != list(range(n))
    ds.close()


def test_same_seed_same_stream_other_seed_other_stream(data: Path) -> None:
    a = take(open_dataset(data, prefetch=0, seed=3), 5, 3)
    b = take(open_dataset(data, prefetch=2, seed=3), 5, 3)
    c = take(open_dataset(data, prefetch=0, seed=4), 5, 3)
    assert a == b
    assert a != c


def test_batches_cross_the_epoch_boundary(data: Path) -> None:
    ds = open_dataset(data, prefetch=0, shuffle=False)
    got = take(ds, 3, 6)
    assert got == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 0, 1, 2, 3]]
    assert ds.state_dict()["epoch"] == 1 and ds.state_dict()["offset"] == 4


def test_shuffle_window_keeps_reads_local(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", counts=(4,) * 6)
    ds = open_dataset(data, prefetch=0, shuffle_window=2)
    order = ds.order(0).tolist()
    shards = [i // 4 for i in order]
    # consecutive windows of 8 samples come from 2 shards each
    for w in range(0, 24, 8):
        assert len(set(shards[w : w + 8])) == 2


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_sees_the_batches_an_uninterrupted_run_sees(data: Path, prefetch: int) -> None:
    whole = take(open_dataset(data, prefetch=prefetch), 9, 4)
    first = open_dataset(data, prefetch=prefetch)
    head = take(first, 4, 4)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps is plain data
    first.close()
    resumed = open_dataset(data, prefetch=prefetch)
    take(resumed, 2, 4)  # a prefetch thread already running ahead must not leak into the resumed stream
    resumed.load_state_dict(state)
    assert head + take(resumed, 5, 4) == whole


def test_resume_refuses_a_changed_dataset(tmp_path: Path) -> None:
    ds = open_dataset(make_dataset(tmp_path / "a"), prefetch=0)
    take(ds, 1, 2)
    other = open_dataset(make_dataset(tmp_path / "b", counts=(3, 4)), prefetch=0)
    with pytest.raises(ShardError, match="samples: 14 then, 7 now"):
        other.load_state_dict(ds.state_dict())


def test_ranks_split_each_epoch_into_disjoint_equal_parts(data: Path) -> None:
    parts = [open_dataset(data, prefetch=0, split_ranks=True, rank=r, world_size=3).order(0).tolist() for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # 14 // 3
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 12
    assert flat == open_dataset(data, prefetch=0).order(0).tolist()[:12]


def test_ranks_from_torchrun_environment(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert open_dataset(data, prefetch=0).world_size == 1  # the engine's data parallelism: same stream
    ds = open_dataset(data, prefetch=0, split_ranks=True)
    assert (ds.rank, ds.world_size) == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ShardError, match="rank 2 is not in"):
        open_dataset(data, prefetch=0, split_ranks=True)


def test_condition_null_condition_mask_and_extras(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", extra=True)
    batch = open_dataset(data, prefetch=0, shuffle=False, mask_key="text_mask").next_batch(3, torch.Generator())
    assert batch.x0.dtype == torch.float32 and batch.x0.shape == (3, *SHAPE)
    assert torch.equal(batch.condition["text"][:, 0, 0], torch.tensor([0.5, 1.5, 2.5]))
    assert batch.condition["text_mask"].tolist() == [[True] * 4 + [False]] * 3
    assert torch.equal(batch.condition["image"][:, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert batch.null_condition is not None
    assert torch.all(batch.null_condition["text"] == -1.0) and batch.null_condition["text"].shape == (3, *TEXT)
    assert torch.equal(batch.null_condition["image"], batch.condition["image"])


def test_null_modes(tmp_path: Path) -> None:
    with_neg = make_dataset(tmp_path / "a")
    without = make_dataset(tmp_path / "b", negative=False)
    g = torch.Generator()
    assert open_dataset(without, prefetch=0).next_batch(2, g).null_condition is None
    assert open_dataset(with_neg, prefetch=0, null_condition="none").next_batch(2, g).null_condition is None
    zeros = open_dataset(without, prefetch=0, null_condition="zeros").next_batch(2, g).null_condition
    assert zeros is not None and torch.all(zeros["text"] == 0)
    with pytest.raises(ShardError, match="stores no negative-prompt embedding"):
        open_dataset(without, null_condition="negative")


def test_conditions_and_captions(data: Path) -> None:
    ds = open_dataset(data, prefetch=0)
    cond, null = ds.conditions(5, torch.Generator().manual_seed(0))
    assert cond["text"].shape == (5, *TEXT) and null is not None
    assert ds.captions(torch.tensor([0, 3, 13])) == ["prompt 0", "prompt 3", "prompt 13"]


# -- damage ---------------------------------------------------------------------------------------------


def rewrite(path: Path, change, *, keep_metadata: bool = True) -> None:
    """Rewrite a shard with ``change(tensors)`` applied (its index entry is left as it was)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() if keep_metadata else None
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def fix_size(root: Path, name: str) -> None:
    """Make the index's byte count match the file again, so that the deeper checks are the ones that fire."""
    index = json.loads((root / "index.json").read_text())
    for e in index["shards"]:
        if e["file"] == name:
            e["bytes"] = (root / name).stat().st_size
    (root / "index.json").write_text(json.dumps(index))


SHARD = "shard-000001.safetensors"


def truncate(root: Path) -> None:
    p = root / SHARD
    p.write_bytes(p.read_bytes()[:-7])


def truncate_and_fix_index(root: Path) -> None:
    truncate(root)
    fix_size(root, SHARD)


def wrong_dtype(root: Path) -> None:
    rewrite(root / SHARD, lambda t: t.update(latents=t["latents"].float()))
    fix_size(root, SHARD)


def wrong_shape(root: Path) -> None:
    rewrite(root / SHARD, lambda t: t.update(text=t["text"][:, :3].contiguous()))
    fix_size(root, SHARD)


def missing_key(root: Path) -> None:
    rewrite(root / SHARD, lambda t: t.pop("text"))
    fix_size(root, SHARD)


def count_mismatch(root: Path) -> None:
    index = json.loads((root / "index.json").read_text())
    index["shards"][1]["count"] = 5
    (root / "index.json").write_text(json.dumps(index))


def missing_file(root: Path) -> None:
    (root / SHARD).unlink()


def bad_header(root: Path) -> None:
    p = root / SHARD
    raw = bytearray(p.read_bytes())
    assert struct.unpack("<Q", raw[:8])[0] > 2
    raw[8:9] = b"#"  # the header's opening brace
    p.write_bytes(bytes(raw))


def captions_lost(root: Path) -> None:
    rewrite(root / SHARD, lambda t: None, keep_metadata=False)
    fix_size(root, SHARD)


DAMAGE = [
    ("truncated", truncate, [SHARD, "truncated"]),
    ("truncated, index edited to match", truncate_and_fix_index, [SHARD, "truncated"]),
    ("wrong dtype", wrong_dtype, [SHARD, "[latents]", "dtype float32, the index says bfloat16"]),
    ("wrong shape", wrong_shape, [SHARD, "[text]", "shape [4, 3, 6], expected [4, 5, 6]"]),
    ("missing key", missing_key, [SHARD, "[text]: missing"]),
    ("count mismatch", count_mismatch, [SHARD, "[latents]: 4 samples, the index says 5"]),
    ("missing file", missing_file, [SHARD, "missing"]),
    ("corrupt header", bad_header, [SHARD, "corrupt safetensors header"]),
    ("captions lost", captions_lost, [SHARD, "[captions]"]),
]


@pytest.mark.parametrize(("damage", "expected"), [(f, e) for _, f, e in DAMAGE], ids=[n for n, _, _ in DAMAGE])
def test_damaged_shard_is_named_when_the_dataset_is_built(data: Path, damage, expected: list[str]) -> None:
    damage(data)
    with pytest.raises(ShardError) as info:
        open_dataset(data)
    message = str(info.value)
    for part in expected:
        assert part in message, message


def build_error(data: Path) -> str:
    with pytest.raises(ShardError) as info:
        open_dataset(data)
    return str(info.value)


def test_every_problem_is_reported_at_once(data: Path) -> None:
    wrong_dtype(data)
    (data / "shard-000003.safetensors").unlink()
    message = build_error(data)
    assert "shard-000001.safetensors [latents]" in message and "shard-000003.safetensors: missing" in message


def test_broken_index(data: Path) -> None:
    (data / "index.json").write_text('{"format": "rcm-latent-shards", "version": 7, "tensors": {}, "shards": [{}]}')
    message = build_error(data)
    assert "index.json [version]" in message and "index.json [shards[0]]" in message
    (data / "index.json").write_text("{not json")
    assert "index.json: not readable JSON" in build_error(data)
    (data / "index.json").unlink()
    assert "index.json: missing" in build_error(data)


def test_checksums_catch_changed_bytes_when_asked(data: Path) -> None:
    path = data / SHARD
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # same size, valid header: only the hash can tell
    path.write_bytes(bytes(raw))
    read_header(path)
    take(open_dataset(data, prefetch=0, shuffle=False), 3, 5)  # not checked by default
    ds = open_dataset(data, prefetch=0, shuffle=False, verify_checksums=True)
    with pytest.raises(ShardError, match=f"{SHARD}: sha256"):
        take(ds, 3, 5)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_shard_damaged_during_training_is_an_error_not_a_crash(data: Path, prefetch: int) -> None:
    ds = open_dataset(data, prefetch=prefetch, shuffle=False)
    take(ds, 1, 2)  # samples 0, 1; a worker has read at most up to sample 7, never the last shard (9..13)
    last = data / "shard-000003.safetensors"
    last.write_bytes(last.read_bytes()[:-200])  # the file is read, not memory-mapped: no SIGBUS
    take(ds, 3, 2)  # samples 2..7 are intact
    with pytest.raises(ShardError, match=r"shard-000003\.safetensors: truncated"):
        take(ds, 1, 2)  # samples 8, 9
    assert ds.state_dict()["offset"] == 8  # the failing batch was not counted as consumed
    ds.close()


def test_dropping_the_dataset_stops_its_thread(data: Path) -> None:
    before = threading.active_count()
    ds = open_dataset(data, prefetch=1)
    take(ds, 1, 2)
    assert threading.active_count() == before + 1
    del ds
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
