"""Damaged run directories on the command line: each case breaks a copy of a finished tiny run in one way,
runs one command on it and expects exit 2 (1 for a diverged run), the damaged file named on stderr and no
traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import yaml

from rcm_registry.commands._shared import load_validated_recipe
from rcm_registry.engine.run_layout import latest_checkpoint
from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error
from rcm_registry.testing.runs import TEACHER_RECIPE, TINY_TEACHER, tiny_args

TEACHER = TEACHER_RECIPE
SETS = list(TINY_TEACHER)
TINY = tiny_args()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli("run", TEACHER, *TINY, "--out", str(out))
    assert result.code == 0, result.err
    return out


def latest(run: Path) -> Path:
    path = latest_checkpoint(run)
    assert path is not None
    return path


Damage = Callable[[Path], object]


def flipped(name: str) -> Damage:
    """One byte changed inside the tensor data of the latest checkpoint's ``name``: same size, header intact,
    only a checksum can tell."""

    def damage(run: Path) -> None:
        path = latest(run) / name
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x55
        path.write_bytes(bytes(raw))

    return damage


def cut(name: str) -> Damage:
    return lambda run: (latest(run) / name).write_bytes((latest(run) / name).read_bytes()[:100])


def removed(name: str) -> Damage:
    return lambda run: (latest(run) / name).unlink()


def replaced(name: str, text: str) -> Damage:
    return lambda run: (latest(run) / name).write_text(text)


def without_checksums(then: Damage) -> Damage:
    """A checkpoint as versions before checksums wrote it (no ``sha256`` in meta.json), then ``then``."""

    def damage(run: Path) -> None:
        meta = json.loads((latest(run) / "meta.json").read_text())
        del meta["sha256"]
        (latest(run) / "meta.json").write_text(json.dumps(meta))
        then(run)

    return damage


def unstarted(run: Path, *sets: str) -> None:
    """Make ``run`` what ``rcm run`` leaves when killed before its first checkpoint: its recipe.yaml (with
    ``sets`` changed) and some metrics."""
    shutil.rmtree(run / "checkpoints")
    if sets:
        recipe = load_validated_recipe(TEACHER, [*SETS, *sets])
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.data, sort_keys=False))
        (run / "metrics.jsonl").write_text('{"iteration": 5, "loss": 1.0}\n')


def resume(run: Path, tmp: Path) -> list[str]:
    return ["run", TEACHER, *TINY, "--out", str(run), "--resume"]


def fresh(run: Path, tmp: Path) -> list[str]:
    return ["run", TEACHER, *TINY, "--out", str(run)]


def sample(run: Path, tmp: Path) -> list[str]:
    return ["sample", str(run), "--num", "16", "--steps", "2", "--out", str(tmp / "out.png")]


def export(run: Path, tmp: Path) -> list[str]:
    return ["export", str(run), "--out", str(tmp / "exported")]


@attrs.frozen
class Case:
    id: str
    damage: Damage
    command: Callable[[Path, Path], list[str]]
    named: tuple[str, ...]
    code: int = 2
    extra: tuple[str, ...] = ()


LR = ("--set", "phases.teacher.optimizer.lr=0.5")
CASES = [
    Case("meta-not-json", replaced("meta.json", "{oops"), resume, ("meta.json: not readable JSON",)),
    Case("meta-not-object", replaced("meta.json", "[1, 2]"), sample, ("meta.json: expected a JSON object",)),
    Case("meta-no-iteration", replaced("meta.json", '{"format": 1}'), resume, ("meta.json: no integer 'iteration'",)),
    Case(
        "meta-bad-checksums", replaced("meta.json", '{"iteration": 20, "sha256": [1]}'), sample, ("meta.json [sha256]",)
    ),
    Case("recipe-missing", removed("recipe.yaml"), sample, ("recipe.yaml: missing",)),
    Case("recipe-missing-resume", removed("recipe.yaml"), resume, ("recipe.yaml: missing",)),
    Case("model-cut", cut("model.safetensors"), sample, ("model.safetensors: sha256",), extra=("--no-ema",)),
    Case("model-bytes-flipped", flipped("model.safetensors"), resume, ("model.safetensors: sha256",)),
    Case("ema-bytes-flipped", flipped("ema.safetensors"), sample, ("ema.safetensors: sha256",)),
    Case("ema-bytes-flipped-export", flipped("ema.safetensors"), export, ("ema.safetensors: sha256",)),
    Case("ema-missing", removed("ema.safetensors"), sample, ("ema.safetensors: missing",)),
    Case("optim-bytes-flipped", flipped("optim.pt"), resume, ("optim.pt: sha256",)),
    Case("state-cut", cut("state.pt"), resume, ("state.pt: sha256",)),
    Case("old-model-cut", without_checksums(cut("model.safetensors")), resume, ("model.safetensors: cannot read",)),
    Case("old-state-cut", without_checksums(cut("state.pt")), resume, ("state.pt: cannot read",)),
    Case("resume-other-recipe", lambda r: None, resume, ("recipe.yaml: the recipe differs", "optimizer.lr"), extra=LR),
    Case("fresh-into-finished-run", lambda r: None, fresh, ("already holds a run: pass --resume",)),
    Case(
        "fresh-into-unstarted-run-of-another-recipe",
        lambda r: unstarted(r, "run.seed=3"),
        fresh,
        ("recipe.yaml: the recipe differs", "run.seed: 3 then, 0 now", "no checkpoint yet"),
    ),
    Case(
        "resume-unstarted-run-of-another-recipe",
        lambda r: unstarted(r, "run.seed=3"),
        resume,
        ("recipe.yaml: the recipe differs", "run.seed"),
    ),
    Case(
        "unstarted-run-recipe-not-yaml",
        lambda r: (unstarted(r), (r / "recipe.yaml").write_text("run: [unclosed")),
        fresh,
        ("recipe.yaml: not readable YAML",),
    ),
    Case(
        "metrics-without-recipe",
        lambda r: (unstarted(r), (r / "recipe.yaml").unlink()),
        fresh,
        ("metrics.jsonl: a run's metrics without its recipe.yaml",),
    ),
    Case(
        "diverged-learning-rate",
        shutil.rmtree,
        fresh,
        ("training diverged: loss 'flow_matching' of phase 'teacher' is nan at iteration", "optimizer.lr"),
        code=1,
        extra=("--set", "phases.teacher.optimizer.lr=1e30"),
    ),
    Case(  # past float32's range: refused by validation, before anything runs
        "overflowing-learning-rate",
        shutil.rmtree,
        fresh,
        ("phases.teacher.optimizer.lr: 1e+39 is out of range",),
        extra=("--set", "phases.teacher.optimizer.lr=1e39"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_run(case: Case, finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    case.damage(run)
    result = run_cli(*case.command(run, tmp_path), *case.extra)
    assert_user_error(result, case.named, code=case.code, absent=[tmp_path / "out.png", tmp_path / "exported"])
    assert len(result.err.strip().splitlines()[-1]) > 0 and result.err.count("error:") == 1, result.err
