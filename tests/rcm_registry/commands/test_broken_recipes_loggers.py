"""Broken ``loggers`` sections and sample-picture settings: ``rcm validate`` and ``rcm run`` refuse them before a
run directory exists. A tracker whose package is missing names the extra that installs it.

Every case: exit 2, the YAML path named in stderr (and the extra where one is missing), no traceback, nothing
written.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error, tree

ROOT = Path(__file__).resolve().parents[3]
QUICK = str(ROOT / "recipes/quickstart/teacher.yaml")

#: (id, --set overrides, what stderr must name)
CASES: list[tuple[str, list[str], str]] = [
    (
        "unknown-logger",
        ["loggers=[{use: tensorbord}]"],
        "loggers[0].use: unknown logger 'tensorbord'; did you mean 'tensorboard'?",
    ),
    ("logger-not-a-list", ["loggers={use: jsonl}"], "loggers: expected"),
    ("logger-unknown-key", ["loggers=[{use: jsonl}, {use: tensorboard, flush: 3}]"], "loggers[1].flush: unknown key"),
    ("logger-bad-value", ["loggers=[{use: tensorboard, flush_secs: 0}]"], "loggers[0].flush_secs: must be > 0"),
    ("wandb-mode", ["loggers=[{use: wandb, mode: offlin}]"], "loggers[0].mode"),
    ("logger-twice", ["loggers=[{use: jsonl}, {use: jsonl}]"], "loggers[1]: logger 'jsonl' is listed twice"),
    ("sample-every-negative", ["run.sample_every=-1"], "run.sample_every: must be >= 0"),
    ("sample-num-zero", ["run.sample_every=10", "run.sample_num=0"], "run.sample_num: must be > 0"),
    (
        "sample-every-no-sampler",
        ["run.sample_every=10", "sample=null"],
        "run.sample_every: the sample pictures need the recipe's `sample:` section",
    ),
]
#: (logger, module whose absence is simulated, the extra the message must name)
MISSING = [("tensorboard", "tensorboard", "'.[tensorboard]'"), ("wandb", "wandb", "'.[wandb]'")]


def commands(sets: list[str]) -> list[list[str]]:
    overrides = [arg for value in sets for arg in ("--set", value)]
    return [["validate", QUICK, *overrides], ["run", QUICK, "--out", "run", "--no-progress", *overrides]]


@pytest.mark.parametrize(("sets", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_loggers_are_refused(
    sets: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in commands(sets):
        before = tree(tmp_path)
        assert_user_error(run_cli(*argv), named, tmp_path, before)


@pytest.mark.parametrize(("logger", "module", "extra"), MISSING, ids=[m[0] for m in MISSING])
def test_a_missing_tracker_package_names_its_extra(
    logger: str, module: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    for argv in commands([f"loggers=[{{use: jsonl}}, {{use: {logger}}}]"]):
        before = tree(tmp_path)
        result = run_cli(*argv)
        assert_user_error(result, "loggers[1]", tmp_path, before)
        assert extra in result.err and f"needs the {module} package" in result.err, result.err


def test_the_trackers_validate_when_installed(tmp_path: Path) -> None:
    """The cases above fail for their own reason: the same recipe with both trackers is valid here."""
    result = run_cli(
        "validate",
        QUICK,
        "--set",
        "loggers=[{use: jsonl}, {use: tensorboard}, {use: wandb}]",
        "--set",
        "run.sample_every=10",
    )
    assert result.code == 0, result.err
