# ruff: noqa: E501  (the table of cases reads best one case per line)
"""Broken recipes: each gives exit code 2, one line per problem with its YAML path, no traceback,
and no run directory."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rcm_registry.testing import run_cli, run_cli_subprocess

GOOD: dict[str, Any] = {
    "data": {"use": "gaussian_mixture_2d", "layout": "grid", "grid_size": 3, "labels": True},
    "schedule": {"use": "rectified_flow", "time_scale": 1000},
    "networks": {"teacher": {"use": "mlp", "dim": 2, "width": 16, "depth": 2, "num_classes": 9}},
    "phases": {
        "teacher": {
            "losses": [{"use": "flow_matching", "time": {"use": "uniform_shift", "shift": 1.0}}],
            "optimizer": {"use": "adamw", "lr": 1.0e-3},
            "ema": {"use": "power", "rate": 0.1},
        }
    },
    "sample": {"use": "euler", "steps": 4},
    "metrics": [{"use": "mode_coverage"}],
    "run": {"iterations": 2, "batch_size": 8},
}


def setter(path: str, value: Any) -> Callable[[dict], None]:
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def apply(d: dict) -> None:
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return apply


def deleter(path: str) -> Callable[[dict], None]:
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def apply(d: dict) -> None:
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return apply


# (id, mutation of GOOD, substrings expected in the error output)
CASES: list[tuple[str, Callable[[dict], None], list[str]]] = [
    ("lr-string", setter("phases.teacher.optimizer.lr", "abc"), ["phases.teacher.optimizer.lr: expected float, got 'abc'"]),
    ("lr-negative", setter("phases.teacher.optimizer.lr", -1e-3), ["phases.teacher.optimizer.lr: must be > 0"]),
    ("lr-zero", setter("phases.teacher.optimizer.lr", 0), ["phases.teacher.optimizer.lr: must be > 0"]),
    ("lr-missing", deleter("phases.teacher.optimizer.lr"), ["phases.teacher.optimizer.lr: required key missing"]),
    ("lr-list", setter("phases.teacher.optimizer.lr", [1, 2]), ["phases.teacher.optimizer.lr: expected float, got a list"]),
    ("lr-bool", setter("phases.teacher.optimizer.lr", True), ["phases.teacher.optimizer.lr: expected float"]),
    ("betas-short", setter("phases.teacher.optimizer.betas", [0.9]), ["phases.teacher.optimizer.betas: expected a list of 2"]),
    ("betas-type", setter("phases.teacher.optimizer.betas", "x"), ["phases.teacher.optimizer.betas: expected a list of 2"]),
    ("betas-range", setter("phases.teacher.optimizer.betas", [1.5, 0.9]), ["phases.teacher.optimizer.betas:"]),
    ("wd-negative", setter("phases.teacher.optimizer.weight_decay", -0.1), ["phases.teacher.optimizer.weight_decay: must be >= 0"]),
    ("optimizer-unknown", setter("phases.teacher.optimizer.use", "adamm"), ["phases.teacher.optimizer.use: unknown optimizer 'adamm'; did you mean 'adamw'?"]),
    ("optimizer-missing-use", setter("phases.teacher.optimizer", {"lr": 1e-3}), ["phases.teacher.optimizer.use: required"]),
    ("optimizer-missing", deleter("phases.teacher.optimizer"), ["phases.teacher.optimizer: required key missing"]),
    ("optimizer-scalar", setter("phases.teacher.optimizer", 3), ["phases.teacher.optimizer: expected a optimizer component"]),
    ("loss-unknown", setter("phases.teacher.losses.0.use", "flow_matchin"), ["phases.teacher.losses[0].use: unknown loss 'flow_matchin'; did you mean 'flow_matching'?"]),
    ("losses-empty", setter("phases.teacher.losses", []), ["phases.teacher.losses:"]),
    ("losses-not-list", setter("phases.teacher.losses", {"use": "flow_matching"}), ["phases.teacher.losses: expected a list"]),
    ("loss-extra-key", setter("phases.teacher.losses.0.wieght", 1.0), ["phases.teacher.losses[0].wieght: unknown key; did you mean 'weight'?"]),
    ("loss-bad-dropout", setter("phases.teacher.losses.0.cond_dropout", 1.5), ["phases.teacher.losses[0].cond_dropout: must be in [0.0, 1.0]"]),
    ("loss-start-negative", setter("phases.teacher.losses.0.start", -3), ["phases.teacher.losses[0].start: expected an int >= 0"]),
    ("nested-time-unknown", setter("phases.teacher.losses.0.time.use", "lognormall"), ["phases.teacher.losses[0].time.use: unknown time_sampler 'lognormall'; did you mean 'lognormal'?"]),
    ("nested-time-bad-shift", setter("phases.teacher.losses.0.time.shift", -1.0), ["phases.teacher.losses[0].time.shift:"]),
    ("ema-unknown", setter("phases.teacher.ema.use", "powr"), ["phases.teacher.ema.use: unknown ema 'powr'; did you mean 'power'?"]),
    ("ema-bad-rate", setter("phases.teacher.ema.rate", 0.0), ["phases.teacher.ema.rate:"]),
    ("phase-unknown-key", setter("phases.teacher.evrey", 5), ["phases.teacher.evrey: unknown key; did you mean 'every'?"]),
    ("phase-every-zero", setter("phases.teacher.every", 0), ["phases.teacher.every: must be > 0"]),
    ("phase-every-float", setter("phases.teacher.every", 2.5), ["phases.teacher.every: expected int, got 2.5"]),
    ("phase-grad-clip-negative", setter("phases.teacher.grad_clip", -1.0), ["phases.teacher.grad_clip: must be > 0"]),
    ("phase-trains-unknown", setter("phases.teacher.trains", "studnt"), ["phases.teacher.trains: no network role 'studnt' to train"]),
    ("phase-name-not-a-role", lambda d: d["phases"].update(critic=d["phases"].pop("teacher")), ["phases.critic: no network role 'critic' to train"]),
    ("phases-empty", setter("phases", {}), ["phases:"]),
    ("phases-missing", deleter("phases"), ["phases: required key missing"]),
    ("networks-missing", deleter("networks"), ["networks: required key missing"]),
    ("networks-not-mapping", setter("networks", ["mlp"]), ["networks: expected a mapping"]),
    ("network-unknown", setter("networks.teacher.use", "mlpp"), ["networks.teacher.use: unknown network 'mlpp'; did you mean 'mlp'?"]),
    ("network-width-string", setter("networks.teacher.width", "wide"), ["networks.teacher.width: expected int, got 'wide'"]),
    ("network-depth-negative", setter("networks.teacher.depth", -2), ["networks.teacher.depth: must be > 0"]),
    ("network-unknown-key", setter("networks.teacher.widht", 3), ["networks.teacher.widht: unknown key; did you mean 'width'?"]),
    ("network-entry-scalar", setter("networks.teacher", "mlp"), ["networks.teacher: expected a mapping"]),
    ("init-from-unknown", lambda d: d["networks"].update(student={"init_from": "techer"}), ["networks.student.init_from: unknown network 'techer'; did you mean 'teacher'?"]),
    ("init-from-cycle", lambda d: d["networks"].update(a={"init_from": "b"}, b={"init_from": "a"}), ["init_from: cycle a -> b -> a"]),
    ("weights-missing-path", setter("networks.teacher.weights", {"ema": True}), ["networks.teacher.weights.path: required key missing"]),
    ("data-unknown", setter("data.use", "gaussian_mixture"), ["data.use: unknown dataset 'gaussian_mixture'; did you mean 'gaussian_mixture_2d'?"]),
    ("data-missing", deleter("data"), ["data: required key missing"]),
    ("data-layout", setter("data.layout", "rings"), ["data.layout: expected one of 'ring', 'grid', got 'rings'"]),
    ("data-std-negative", setter("data.std", -0.1), ["data.std: must be > 0"]),
    ("data-labels-string", setter("data.labels", "yes"), ["data.labels: expected a boolean"]),
    ("data-missing-value", setter("data.std", "???"), ["data.std: value required (write it in the recipe or pass --set data.std=VALUE)"]),
    ("run-missing", deleter("run"), ["run: required key missing"]),
    ("run-iterations-missing", deleter("run.iterations"), ["run.iterations: required key missing"]),
    ("run-iterations-zero", setter("run.iterations", 0), ["run.iterations: must be > 0"]),
    ("run-batch-string", setter("run.batch_size", "big"), ["run.batch_size: expected int, got 'big'"]),
    ("run-precision", setter("run.precision", "fp8"), ["run.precision: expected one of 'fp32', 'bf16', got 'fp8'"]),
    ("run-seed-negative", setter("run.seed", -1), ["run.seed: must be >= 0"]),
    ("run-unknown-key", setter("run.iteratoins", 3), ["run.iteratoins: unknown key; did you mean 'iterations'?"]),
    ("top-unknown-key", setter("phase", {}), ["phase: unknown key; did you mean 'phases'?"]),
    ("schedule-unknown", setter("schedule.use", "rectified"), ["schedule.use: unknown schedule 'rectified'; did you mean 'rectified_flow'?"]),
    ("sample-bad-steps", setter("sample.steps", 0), ["sample.steps: must be > 0"]),
    ("metric-unknown", setter("metrics.0.use", "mode_coverag"), ["metrics[0].use: unknown metric 'mode_coverag'; did you mean 'mode_coverage'?"]),
    ("metrics-not-list", setter("metrics", {"use": "mode_coverage"}), ["metrics: expected a list"]),
    ("output-network-unknown", setter("output_network", "studen"), ["output_network: unknown network 'studen'"]),
    ("schedule-missing", deleter("schedule"), ["sample (euler): integrates the schedule's ODE", "(flow_matching): needs a top-level `schedule:`"]),
    ("time-section-unknown", setter("time", {"student": {"use": "lognrmal"}}), ["time.student.use: unknown time_sampler 'lognrmal'"]),
]  # fmt: skip


def write_recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_good_recipe_is_valid(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_recipe(tmp_path, GOOD)))
    assert result.code == 0, result.err


def test_there_are_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50


def _check_failure(result, tmp_path: Path, expected: list[str]) -> None:
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    for text in expected:
        assert text in result.err, f"{text!r} not in:\n{result.err}"
    problem_lines = [line for line in result.err.splitlines() if line.startswith("  ")]
    assert problem_lines, result.err
    assert not (tmp_path / "out").exists(), "a broken recipe must not create a run directory"


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_recipe(tmp_path: Path, mutate: Callable[[dict], None], expected: list[str]) -> None:
    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write_recipe(tmp_path, data)
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"))
    _check_failure(result, tmp_path, expected)


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["phases"]["teacher"]["optimizer"]["lr"] = "abc"
    data["run"]["batch_size"] = -4
    data["networks"]["teacher"]["use"] = "mlpp"
    data["metrics"][0]["use"] = "nope"
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.code == 2
    for text in ("optimizer.lr", "run.batch_size", "networks.teacher.use", "metrics[0].use"):
        assert text in result.err
    assert "4 problems" in result.err


FILE_CASES: list[tuple[str, str, str]] = [
    ("bad-yaml", "run: {iterations: 3\n", "invalid YAML"),
    ("tabs", "run:\n\titerations: 3\n", "invalid YAML"),
    ("not-mapping", "[1, 2, 3]\n", "top level must be a mapping"),
    ("base-missing", "base: missing.yaml\n", "recipe file not found"),
    ("base-cycle", "base: recipe.yaml\n", "inheritance cycle"),
    ("python-tag", "run: !!python/name:os.system\n", "recipe.yaml:1:6: tag !!python/name:os.system is not allowed"),
    ("base-not-string", "base: {a: 1}\n", "base: expected a path"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_broken_recipe_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"))
    _check_failure(result, tmp_path, [expected])


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.code == 2 and "recipe file not found" in result.err


def test_bad_override_is_a_user_error(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, GOOD)
    result = run_cli("run", str(path), "--set", "run.iterations", "--out", str(tmp_path / "out"))
    _check_failure(result, tmp_path, ["--set run.iterations: expected KEY=VALUE"])
    result = run_cli("run", str(path), "--set", "run.iterations=-5", "--out", str(tmp_path / "out"))
    _check_failure(result, tmp_path, ["run.iterations: must be > 0"])


def test_exit_code_two_in_a_real_process(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["phases"]["teacher"]["optimizer"]["lr"] = -1
    result = run_cli_subprocess("run", str(write_recipe(tmp_path, data)), "--out", str(tmp_path / "out"))
    _check_failure(result, tmp_path, ["phases.teacher.optimizer.lr: must be > 0"])
