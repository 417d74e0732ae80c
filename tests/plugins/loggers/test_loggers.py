"""The ``loggers`` recipe key on short quickstart-teacher runs: ``jsonl`` writes what the trainer computed (and is
the default), TensorBoard's event files and the offline wandb run hold the same scalars and the sample pictures,
and sampling during training leaves the trained weights bitwise as they are without it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rcm_registry as rr
from rcm_registry.engine.checkpoint import latest_checkpoint
from rcm_registry.engine.trainer import Trainer
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "recipes/quickstart/teacher.yaml")
ITERATIONS = 6
SMALL = [
    "networks.teacher.width=32",
    "networks.teacher.depth=1",
    "run.batch_size=64",
    "run.log_every=2",
    f"run.iterations={ITERATIONS}",
    "run.checkpoint_every=0",
]
#: Keys metrics.jsonl had before loggers were components; they stay, with the same meaning.
JSONL_KEYS = {"iteration", "phase", "it_per_s", "loss", "loss/flow_matching", "flow_matching/mse", "time"}
#: What varies from run to run (wall clock).
TIMED = {"it_per_s", "samples_per_s", "time"}


def train(out: Path, *sets: str) -> Path:
    args = [arg for value in (*SMALL, *sets) for arg in ("--set", value)]
    result = run_cli("run", RECIPE, "--out", str(out), "--no-progress", *args)
    assert result.code == 0, result.err
    return out


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with all three loggers and a sample picture every 3 iterations."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    loggers = "loggers=[{use: jsonl}, {use: tensorboard, flush_secs: 1}, {use: wandb}]"
    return train(out, loggers, "run.sample_every=3", "run.sample_num=64")


def test_jsonl_is_the_default_and_holds_what_the_trainer_computed(tracked: Path, tmp_path: Path) -> None:
    default = jsonl(train(tmp_path / "default"))
    assert [r["iteration"] for r in default] == [2, 4, 6]
    assert [{k: v for k, v in r.items() if k not in TIMED} for r in jsonl(tracked)] == [
        {k: v for k, v in r.items() if k not in TIMED} for r in default
    ]
    # The same steps by hand: the logged values are the step's own.
    recipe = validate_recipe(load_recipe(RECIPE, SMALL), rr.registry(), RECIPE)
    trainer = Trainer(recipe, tmp_path / "by_hand", progress=False)
    steps = [trainer.step() for _ in range(ITERATIONS)]
    for record in default:
        values = steps[record["iteration"] - 1]
        assert JSONL_KEYS <= set(record)
        assert record["phase"] == "teacher"
        for key in ("loss", "loss/flow_matching", "flow_matching/mse", "teacher/grad_norm"):
            assert record[key] == values[key], key
        assert record["lr/teacher"] == 1.0e-3  # the recipe's constant learning rate
        assert record["samples_per_s"] > 0 and "gpu/memory_gib" not in record  # CPU: no GPU memory


def test_tensorboard_event_file_has_the_scalars_and_pictures(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    records = jsonl(tracked)
    for key in ("loss", "loss/flow_matching", "teacher/grad_norm", "lr/teacher", "samples_per_s"):
        assert key in tags["scalars"], key
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["iteration"] for r in records]
        np.testing.assert_allclose([s.value for s in scalars], [r[key] for r in records], rtol=1e-6)
    assert "phase" not in tags["scalars"]
    pictures = events.Images("samples")
    assert [p.step for p in pictures] == [3, 6]
    on_disk = Image.open(tracked / "samples/samples_00000003.png")
    assert (pictures[0].width, pictures[0].height) == on_disk.size


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """The history rows of a wandb transaction log (``run-ID.wandb``): a 7-byte header, then records in
    LevelDB's log format (32 KiB blocks; each chunk: CRC-32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", run_file
    block, pos, part, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_scalars_and_pictures(tracked: Path) -> None:
    (run_dir,) = (tracked / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    rows = wandb_history(run_file)
    by_step: dict[int, dict[str, str]] = {}
    for row in rows:
        by_step.setdefault(int(row["_step"]), {}).update(row)
    for record in jsonl(tracked):
        row = by_step[record["iteration"]]
        assert float(row["loss"]) == pytest.approx(record["loss"], rel=1e-12)
        assert float(row["lr/teacher"]) == record["lr/teacher"]
    assert {step for step, row in by_step.items() if "samples/_type" in row} == {3, 6}
    assert len(list((run_dir / "files/media/images").glob("samples_*.png"))) == 2


def test_sampling_during_training_changes_no_weight(tracked: Path, tmp_path: Path) -> None:
    plain = train(tmp_path / "plain")
    sampled, reference = latest_checkpoint(tracked), latest_checkpoint(plain)
    assert sampled is not None and reference is not None
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(sampled / name)), load_file(str(reference / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert sorted(p.name for p in (tracked / "samples").iterdir()) == ["samples_00000003.png", "samples_00000006.png"]
    assert not (plain / "samples").exists() and not (plain / "tensorboard").exists()


def test_the_pictures_are_the_ema_samples_of_rcm_sample(tracked: Path, tmp_path: Path) -> None:
    """The last training picture is what `rcm sample` draws from the final checkpoint with the recipe's seed."""
    from rcm_registry.engine.pictures import samples_picture
    from rcm_registry.engine.sampling import draw, open_checkpoint

    run = open_checkpoint(tracked)
    result = draw(run, 64, seed=0)
    title = f"teacher (EMA), iteration {ITERATIONS}"
    expected = np.asarray(samples_picture(result.samples, result.condition, run.dataset, title).convert("RGB"))
    written = Image.open(tracked / f"samples/samples_{ITERATIONS:08d}.png").convert("RGB")
    assert np.array_equal(np.asarray(written), expected)


def test_loggers_may_change_on_resume(tmp_path: Path) -> None:
    run = train(tmp_path / "run", "run.checkpoint_every=2", "run.iterations=4")
    args = [arg for value in (*SMALL, "loggers=[{use: jsonl}, {use: tensorboard}]") for arg in ("--set", value)]
    result = run_cli("run", RECIPE, "--out", str(run), "--resume", "--no-progress", *args)
    assert result.code == 0, result.err
    assert [r["iteration"] for r in jsonl(run)] == [2, 4, 6]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
