"""The alternation rules of the README ("Alternation"): which phase runs at each iteration, per-loss starts,
and a resume in the middle of a cycle continuing the same sequence."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rcm_registry import registry
from rcm_registry.engine.trainer import Trainer, prepare_run_dir
from rcm_registry.errors import RecipeError
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe

_LOSS = {"use": "flow_matching", "time": {"use": "uniform_shift", "shift": 1.0}}
_OPT = {"use": "adamw", "lr": 1.0e-3}

#: Two phases training one small network with flow matching (no teacher needed), 2-D points.
BASE: dict[str, Any] = {
    "networks": {"net": {"use": "mlp", "dim": 2, "width": 8, "depth": 1, "num_classes": 5}},
    "phases": {},
    "data": {"use": "gaussian_mixture_2d", "labels": True, "classes": 5},
    "schedule": {"use": "rectified_flow"},
    "run": {"iterations": 9, "batch_size": 8, "log_every": 1, "seed": 0, "cpu_threads": 1, "device": "cpu"},
}


def recipe(phases: dict[str, dict[str, Any]], **run: Any) -> Recipe:
    data = copy.deepcopy(BASE)
    for name, phase in phases.items():
        data["phases"][name] = {"trains": "net", "losses": [dict(_LOSS)], "optimizer": dict(_OPT), **phase}
    data["run"].update(run)
    return validate_recipe(data, registry(), "alternation-test")


def sequence(r: Recipe, n: int) -> list[str]:
    return [r.phase_at(i) for i in range(n)]


def test_a_lone_phase_runs_every_iteration() -> None:
    assert sequence(recipe({"only": {"every": 3}}), 5) == ["only"] * 5


def test_every_gives_one_step_of_the_first_phase_then_the_others() -> None:
    r = recipe({"student": {"every": 5}, "critic": {}})
    assert sequence(r, 11) == ["student", "critic", "critic", "critic", "critic"] * 2 + ["student"]


def test_a_later_start_trains_the_first_phase_alone_until_then() -> None:
    r = recipe({"student": {"every": 5}, "critic": {"start": 4}})
    # Iterations 0-3: only the student has started; from 4 the cycle counts from the critic's start.
    assert sequence(r, 10) == ["student"] * 4 + ["student", "critic", "critic", "critic", "critic", "student"]


def test_when_no_every_divides_the_last_started_phase_runs() -> None:
    r = recipe({"a": {"every": 3}, "b": {"every": 2}})
    # since % 3 == 0 -> a; else since % 2 == 0 -> b; else the last of the started phases (b).
    assert sequence(r, 7) == ["a", "b", "b", "a", "b", "b", "a"]


def test_no_phase_starting_at_zero_is_a_validation_error() -> None:
    with pytest.raises(RecipeError) as info:
        recipe({"only": {"start": 50}})
    assert "phases: no phase starts at iteration 0 (the earliest start is 50)" in str(info.value)
    assert "iterations 0-49 would train nothing" in str(info.value)


def test_a_loss_start_is_part_of_the_loss_entry_and_stays_in_the_saved_recipe() -> None:
    r = recipe({"only": {"losses": [dict(_LOSS), {**_LOSS, "start": 3}]}})
    entries = r.body.phases["only"].losses
    assert [e.start for e in entries] == [0, 3] and [e.name for e in entries] == ["flow_matching"] * 2
    assert r.data["phases"]["only"]["losses"][1]["start"] == 3
    assert "start" not in type(entries[1].spec.config).__init__.__annotations__


def test_the_engine_key_cannot_be_set_from_yaml_as_a_phase_field() -> None:
    with pytest.raises(RecipeError, match=r"phases\.only\.loss_starts: unknown key"):
        recipe({"only": {"loss_starts": [5]}})


def test_a_loss_joins_its_phase_at_its_start(tmp_path: Path) -> None:
    """Before its start a loss is not evaluated (no draws from the step generator), so the first iterations
    equal those of the phase without it, bitwise; from its start on the objective has both terms."""
    joined = Trainer(recipe({"only": {"losses": [dict(_LOSS), {**_LOSS, "start": 2}]}}), tmp_path, progress=False)
    alone = Trainer(recipe({"only": {}}), tmp_path, progress=False)
    a = [joined.step()["loss"] for _ in range(3)]
    b = [alone.step()["loss"] for _ in range(3)]
    assert a[:2] == b[:2]
    assert a[2] != b[2]


def _phases_logged(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["iteration"], row["phase"], row["loss"]) for row in rows]


def test_resume_in_the_middle_of_a_cycle_continues_the_same_sequence(tmp_path: Path) -> None:
    phases = {"student": {"every": 3}, "critic": {"start": 1}}
    whole = tmp_path / "whole"
    r = recipe(phases)
    prepare_run_dir(whole, r, resume=False)
    Trainer(r, whole, progress=False).run()

    cut = tmp_path / "cut"
    first = recipe(phases, iterations=5)  # stops at 5: after a student step at 4, inside the 3-step cycle
    prepare_run_dir(cut, first, resume=False)
    Trainer(first, cut, progress=False).run()
    again = recipe(phases)
    ckpt = prepare_run_dir(cut, again, resume=True)
    assert ckpt is not None and ckpt.iteration == 5
    trainer = Trainer(again, cut, progress=False)
    trainer.restore(ckpt)
    trainer.run()

    expected = [(i + 1, r.phase_at(i)) for i in range(9)]
    assert [(it, phase) for it, phase, _ in _phases_logged(whole)] == expected
    assert _phases_logged(cut) == _phases_logged(whole)  # same phases and bitwise the same losses
