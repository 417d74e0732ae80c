"""Faults that must not lose or poison anything: kills before the first checkpoint, during a checkpoint write
and during pruning; non-finite gradients and weights; resuming by recipe value."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rcm_registry.engine.checkpoint as ck
from rcm_registry.atomic import is_temporary
from rcm_registry.commands._shared import load_validated_recipe
from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.engine.run_layout import checkpoint_root, is_complete
from rcm_registry.engine.trainer import (
    MAX_CONSECUTIVE_SKIPS,
    Trainer,
    TrainingDiverged,
    prepare_run_dir,
    recipe_difference,
)
from rcm_registry.errors import NonFiniteCheckpoint
from rcm_registry.testing import run_cli
from rcm_registry.testing.runs import TEACHER_RECIPE, TINY_TEACHER, tiny_args

TEACHER = TEACHER_RECIPE
SETS = list(TINY_TEACHER)
tiny = tiny_args


def weights(run: Path) -> dict[str, torch.Tensor]:
    path = latest_checkpoint(run)
    assert path is not None
    return {f"{f}.{k}": v for f in ("model", "ema") for k, v in load_file(str(path / f"{f}.safetensors")).items()}


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def trainer(run: Path, *extra: str) -> Trainer:
    recipe = load_validated_recipe(TEACHER, [*SETS, *extra])
    resume_from = prepare_run_dir(run, recipe, resume=True)
    t = Trainer(recipe, run, progress=False)
    if resume_from is not None:
        t.restore(resume_from)
    return t


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("run", TEACHER, *tiny(), "--out", str(out))
    assert result.code == 0, result.err
    return out


# -- killed before the first checkpoint ------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.parametrize("again", [[], ["--resume"]])
def test_a_run_killed_before_its_first_checkpoint_starts_again(sig: int, again: list[str], tmp_path: Path) -> None:
    long = tiny("run.iterations=200000", "run.checkpoint_every=0")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rcm_registry.cli", "run", TEACHER, *long, "--out", str(out)])
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=60) == (130 if sig == signal.SIGINT else -sig)
    assert latest_checkpoint(out) is None and (out / "recipe.yaml").is_file()
    result = run_cli("run", TEACHER, *tiny(), "--out", str(out), *again)
    assert result.code == 0, result.err
    assert "starting the run again from iteration 0" in result.err
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == list(range(1, 21)), "the killed attempt's metrics are gone"


def test_resume_of_a_directory_without_a_run_starts_one(reference: Path, tmp_path: Path) -> None:
    result = run_cli("run", TEACHER, *tiny(), "--out", str(tmp_path / "new"), "--resume")
    assert result.code == 0, result.err
    assert "no run here yet, starting a new one" in result.err
    assert_equal(weights(reference), weights(tmp_path / "new"))


# -- killed while writing or pruning a checkpoint -------------------------------------------------------
def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real = ck.save_file
    calls = {"n": 0}

    def dying(tensors: dict, path: str, metadata: dict | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # model.safetensors of the second checkpoint: half written, then the process dies
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer(run).run()
    monkeypatch.setattr(ck, "save_file", real)
    root = checkpoint_root(run)
    assert sorted(p.name for p in root.iterdir()) == ["iter_00000005", "latest"], "no half folder, no temporary"
    Checkpoint(latest_checkpoint(run)).verify()
    trainer(run).run()
    assert_equal(weights(reference), weights(run))


def test_a_prune_that_dies_midway_leaves_no_checkpoint_lookalike(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old prune deleted the folder in place: a kill left ``meta.json`` without its tensors (a
    'complete' checkpoint that cannot load) or tensors without ``meta.json`` (never removed again)."""
    run = tmp_path / "run"
    real = ck.shutil.rmtree

    def dying(path: Path, ignore_errors: bool = False) -> None:
        (Path(path) / "model.safetensors").unlink()  # part of the deletion, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.shutil, "rmtree", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer(run).run()  # checkpoints 5 and 10 written, the prune after 15 dies deleting 5
    monkeypatch.setattr(ck.shutil, "rmtree", real)
    root = checkpoint_root(run)
    complete = sorted(p for p in root.iterdir() if is_complete(p))
    assert [p.name for p in complete] == ["iter_00000010", "iter_00000015"]
    for path in complete:
        Checkpoint(path).verify()
    assert len([p for p in root.iterdir() if is_temporary(p)]) == 1
    (root / "iter_00000003").mkdir()  # what the old prune left when it had deleted meta.json first
    (root / "iter_00000003" / "model.safetensors").write_bytes(b"x")
    trainer(run).run()
    assert sorted(p.name for p in root.iterdir()) == ["iter_00000015", "iter_00000020", "latest"]
    assert_equal(weights(reference), weights(run))


# -- non-finite gradients and weights --------------------------------------------------------------------
def test_non_finite_gradients_skip_the_step_and_count_it(tmp_path: Path) -> None:
    t = trainer(tmp_path / "run")
    net = t.graph.module("teacher")
    poisoned = {2, 3, 6}
    first = next(net.parameters())
    first.register_hook(lambda g: g * float("nan") if t.iteration in poisoned else g)
    phase = t.graph.phases["teacher"]
    seen = []
    for it in range(8):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        ema_before = {k: v.clone() for k, v in phase.ema.state_dict().items()}
        steps = phase.steps
        values = t.step()
        seen.append(values["skipped_steps/teacher"])
        after = net.state_dict()
        if it in poisoned:
            assert phase.steps == steps, "no optimiser step"
            assert all(torch.equal(before[k], after[k]) for k in before), "weights unchanged"
            assert all(torch.equal(ema_before[k], v) for k, v in phase.ema.state_dict().items()), "EMA unchanged"
        else:
            assert phase.steps == steps + 1 and not torch.equal(before["input.weight"], after["input.weight"])
        assert all(torch.isfinite(v).all() for v in after.values())
    assert seen == [0, 0, 1, 2, 2, 2, 3, 3] and t.iteration == 8
    assert t._state()["skipped_steps"] == {"teacher": 3}


def test_too_many_skipped_steps_in_a_row_stop_the_run(tmp_path: Path) -> None:
    t = trainer(tmp_path / "run", "run.iterations=100")
    initial = {k: v.clone() for k, v in t.graph.module("teacher").state_dict().items()}
    next(t.graph.module("teacher").parameters()).register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingDiverged, match=f"non-finite .* in {MAX_CONSECUTIVE_SKIPS} steps in a row"):
        t.run()
    assert t.iteration == MAX_CONSECUTIVE_SKIPS - 1
    saved = Checkpoint(latest_checkpoint(tmp_path / "run")).models()["teacher"]  # iteration 5: nothing stepped
    assert saved.keys() == initial.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)


def test_a_checkpoint_holding_non_finite_weights_is_not_written(tmp_path: Path) -> None:
    t = trainer(tmp_path / "run")
    t.step()
    first = t.save()
    with torch.no_grad():
        t.graph.module("teacher").input.weight[0, 0] = float("inf")  # as a step with a huge lr leaves it
    with pytest.raises(NonFiniteCheckpoint, match=r"iter_00000001.*model\.safetensors\.teacher\.input\.weight"):
        t.save()
    root = checkpoint_root(tmp_path / "run")
    assert sorted(p.name for p in root.iterdir()) == [first.name, "latest"]
    assert all(torch.isfinite(v).all() for v in Checkpoint(first).models()["teacher"].values()), "not overwritten"


def test_save_checkpoint_refuses_a_non_finite_optimiser_state(tmp_path: Path) -> None:
    state = {"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("nan")])}}, "param_groups": [{"lr": 1.0}]}
    with pytest.raises(NonFiniteCheckpoint, match=r"optim\.pt\.teacher\.state\.0\.exp_avg_sq"):
        ck.save_checkpoint(
            tmp_path, 1, models={"teacher": {"w": torch.ones(2)}}, emas={}, optimizers={"teacher": state},
            state={}, recipe={}, keep=2,
        )  # fmt: skip
    assert not checkpoint_root(tmp_path).exists()


def test_a_learning_rate_that_blows_up_writes_only_finite_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(
        "run", TEACHER, *tiny("phases.teacher.optimizer.lr=1e30", "run.checkpoint_every=1", "run.keep_checkpoints=20"),
        "--out", str(run),
    )  # fmt: skip
    assert result.code == 1 and "Traceback" not in result.err
    assert "training diverged: loss 'flow_matching' of phase 'teacher' is nan at iteration" in result.err
    written = [p for p in checkpoint_root(run).iterdir() if is_complete(p)]
    for path in written:
        ckpt = Checkpoint(path)
        for tensors in (ckpt.models(), ckpt.emas()):
            assert all(torch.isfinite(v).all() for sd in tensors.values() for v in sd.values()), path


# -- checksums ------------------------------------------------------------------------------------------
def test_a_checkpoint_without_checksums_still_resumes_with_a_warning(reference: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    meta_path = latest_checkpoint(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["sha256"]
    meta_path.write_text(json.dumps(meta))
    result = run_cli("run", TEACHER, *tiny("run.iterations=25"), "--out", str(run), "--resume")
    assert result.code == 0, result.err
    assert "checkpoint written without checksums" in result.err
    assert "sha256" in json.loads((latest_checkpoint(run) / "meta.json").read_text())


# -- the recipe compared by value ------------------------------------------------------------------------
def test_resume_compares_the_recipe_by_value(reference: Path, tmp_path: Path) -> None:
    import shutil

    spelt_out = ["phases.teacher.lr_warmup=0", "phases.teacher.optimizer.lr=0.0010", "run.precision=fp32"]
    a = load_validated_recipe(TEACHER, SETS)
    b = load_validated_recipe(TEACHER, [*SETS, *spelt_out])
    assert a.data != b.data and recipe_difference(a, b) is None
    c = load_validated_recipe(TEACHER, [*SETS, "phases.teacher.lr_warmup=3"])
    assert recipe_difference(a, c) == "phases.teacher.lr_warmup: 0 then, 3 now"
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    result = run_cli("run", TEACHER, *tiny(*spelt_out, "run.iterations=22"), "--out", str(run), "--resume")
    assert result.code == 0, result.err
    assert Checkpoint(latest_checkpoint(run)).iteration == 22


def test_an_optimiser_step_the_parameters_cannot_hold_is_a_named_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's "without overflow" error from the optimiser step (a learning rate the parameters' dtype cannot
    hold) is TrainingDiverged: one line naming the phase, the iteration and the learning rate, exit code 1."""
    real = torch.optim.AdamW.step

    def overflowing(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        if any(group["lr"] > 1.0 for group in self.param_groups):
            raise RuntimeError("value cannot be converted to type float without overflow")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)
    out = tmp_path / "run"
    result = run_cli("run", TEACHER_RECIPE, *tiny_args("phases.teacher.optimizer.lr=2.0"), "--out", str(out))
    assert result.code == 1, result.err
    assert "training diverged: the optimiser step of phase 'teacher' overflows" in result.err
    assert "iteration 0" in result.err and "learning rate 2" in result.err and "Traceback" not in result.err
    assert not latest_checkpoint(out)
