"""Checkpoint safety: a run killed with SIGKILL resumes to bitwise-equal weights, and a kill during a
checkpoint write leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rcm_registry.atomic import is_temporary
from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.testing import run_cli, run_cli_subprocess

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "recipes/quickstart/teacher.yaml")
SMALL = [
    "--set", "networks.teacher.width=64",
    "--set", "networks.teacher.depth=2",
    "--set", "run.batch_size=128",
    "--set", "run.log_every=50",
    "--set", "run.checkpoint_every=100",
    "--set", "run.keep_checkpoints=3",
]  # fmt: skip


def rcm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "rcm_registry.cli", *args]


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    out = {f"model.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(ckpt / "ema.safetensors")).items()})
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli_subprocess("run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--out", str(out))
    assert result.code == 0, result.err
    return out


def test_sigkill_mid_run_then_resume_is_bitwise_equal(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = rcm_argv("run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--out", str(out), "--no-progress")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(out)
        if ckpt is not None and Checkpoint(ckpt).iteration >= 300:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = Checkpoint(ckpt).iteration
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed; make it longer"
    assert killed_at < 1500
    resumed = run_cli_subprocess("run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--out", str(out), "--resume")
    assert resumed.code == 0, resumed.err
    assert_bitwise_equal(final_tensors(reference_run), final_tensors(out))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    iterations = [int(line.split('"iteration": ')[1].split(",")[0]) for line in lines]
    assert iterations == sorted(set(iterations)), "metrics must not repeat iterations after a resume"


KILL_IN_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    import rcm_registry.engine.checkpoint as ck
    real = ck.save_file
    calls = {"n": 0}
    def dying_save_file(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # model.safetensors of the second checkpoint: write half, then die
            with open(path, "wb") as f:
                f.write(b"partial")
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, path, metadata=metadata)
    ck.save_file = dying_save_file
    from rcm_registry.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = tmp_path / "die.py"
    script.write_text(KILL_IN_WRITE)
    argv = ["run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--out", str(out), "--no-progress"]
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and Checkpoint(ckpt).iteration == 100
    loaded = Checkpoint(ckpt)
    assert loaded.models()["teacher"] and loaded.emas()["teacher"] and loaded.state()["iteration"] == 100
    leftovers = [p for p in (out / "checkpoints").iterdir() if is_temporary(p)]
    assert leftovers, "the killed write should have left its temporary folder behind"
    resumed = run_cli_subprocess("run", *argv[1:], "--resume")
    assert resumed.code == 0, resumed.err
    assert not [p for p in (out / "checkpoints").iterdir() if is_temporary(p)]
    assert_bitwise_equal(final_tensors(reference_run), final_tensors(out))


def test_existing_run_directory_needs_resume(reference_run: Path) -> None:
    result = run_cli("run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--out", str(reference_run))
    assert result.code == 2 and "already holds a run: pass --resume" in result.err


def test_resume_with_a_different_recipe_is_refused(reference_run: Path) -> None:
    result = run_cli(
        "run", RECIPE, *SMALL, "--set", "run.iterations=1500", "--set", "phases.teacher.optimizer.lr=0.5",
        "--out", str(reference_run), "--resume",
    )  # fmt: skip
    assert result.code == 2
    assert "recipe differs" in result.err and "phases.teacher.optimizer.lr" in result.err


def test_resume_may_extend_iterations(reference_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    result = run_cli(
        "run", RECIPE, *SMALL, "--set", "run.iterations=1600", "--out", str(out), "--resume", "--no-progress"
    )
    assert result.code == 0, result.err
    assert Checkpoint(latest_checkpoint(out)).iteration == 1600
