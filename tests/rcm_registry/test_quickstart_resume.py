"""``rcm quickstart`` after a kill at any point carries on cleanly, and distils the student again when the
teacher changed (tiny recipes, so each quickstart takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rcm_registry.quickstart as qs
from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
NET = "{use: mlp, dim: 2, width: 16, depth: 1, num_classes: 5, max_frequency: 30.0}"
RUN = "{iterations: 12, batch_size: 32, checkpoint_every: 4, log_every: 4, cpu_threads: 1}"


def write_recipes(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(exist_ok=True)
    base = ROOT / "recipes/quickstart"
    (folder / "teacher.yaml").write_text(
        f"base: {base / 'teacher.yaml'}\nnetworks:\n  teacher: {NET}\nrun: {{seed: {seed}, {RUN[1:]}\n"
    )
    (folder / "rcm.yaml").write_text(f"base: {base / 'rcm.yaml'}\nnetworks:\n  teacher: {NET}\nrun: {RUN}\n")
    return folder


def quickstart(out: Path, recipes: Path) -> list:
    return qs.run_quickstart(out, str(recipes), 40, progress=False)


def student_weights(out: Path) -> dict[str, torch.Tensor]:
    return Checkpoint(latest_checkpoint(out / "rcm")).models()["student"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("reference")
    out = root / "out"
    return out, quickstart(out, write_recipes(root / "recipes"))


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize(
    "kill_at",
    [
        "teacher-before-checkpoint",
        "teacher-after-checkpoint",
        "student-before-checkpoint",
        "student-after-checkpoint",
        "picture",
    ],
)
def test_quickstart_carries_on_after_a_kill(
    kill_at: str, reference: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = write_recipes(tmp_path / "recipes")
    out = tmp_path / "out"
    real_save, real_step, real_png = Trainer.save, Trainer.step, qs.save_png_atomic
    which = {"teacher": "teacher.yaml", "student": "rcm.yaml"}.get(kill_at.split("-")[0], "-")

    def step(self: Trainer, phase: object = None) -> dict:
        if kill_at.endswith("before-checkpoint") and self.iteration == 2 and which in self.recipe.source:
            raise Killed
        return real_step(self, phase)

    def save(self: Trainer) -> Path:
        path = real_save(self)
        if kill_at.endswith("after-checkpoint") and self.iteration == 8 and which in self.recipe.source:
            raise Killed
        return path

    def png(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "save", save)
    if kill_at == "picture":
        monkeypatch.setattr(qs, "save_png_atomic", png)
    with pytest.raises(Killed):
        quickstart(out, recipes)
    monkeypatch.setattr(Trainer, "step", real_step)
    monkeypatch.setattr(Trainer, "save", real_save)
    monkeypatch.setattr(qs, "save_png_atomic", real_png)
    rows = quickstart(out, recipes)
    ref_out, ref_rows = reference
    assert same(student_weights(out), student_weights(ref_out)), "the same student as an uninterrupted quickstart"
    assert [r.metrics for _, _, r in rows] == [r.metrics for _, _, r in ref_rows]
    assert all((out / f"rcm_{n}step.png").is_file() for n in qs.STUDENT_STEPS)


def test_a_changed_teacher_is_noticed_and_the_student_distilled_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipes = write_recipes(tmp_path / "recipes")
    quickstart(out, recipes)
    first_student, first_record = student_weights(out), json.loads((out / qs.TEACHER_RECORD).read_text())
    quickstart(out, recipes)  # nothing changed: both runs kept
    assert same(student_weights(out), first_student)
    assert json.loads((out / qs.TEACHER_RECORD).read_text()) == first_record

    # The teacher recipe changes: the teacher is trained again, and so the student, whose own recipe is the
    # same (it names the teacher by its run directory) but whose teacher's weights are not.
    quickstart(out, write_recipes(recipes, seed=1))
    record = json.loads((out / qs.TEACHER_RECORD).read_text())
    assert record["sha256"] != first_record["sha256"]
    assert record == qs.teacher_identity(out / "teacher")
    other = tmp_path / "other"
    quickstart(other, write_recipes(tmp_path / "other_recipes", seed=1))
    assert not same(student_weights(out), first_student)
    assert same(student_weights(out), student_weights(other)), "distilled from the new teacher from scratch"


def test_a_lost_teacher_record_distils_the_student_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipes = write_recipes(tmp_path / "recipes")
    quickstart(out, recipes)
    (out / qs.TEACHER_RECORD).write_text('{"cut by a ki')
    (out / "rcm" / "checkpoints" / "iter_00000012" / "marker").write_text("old")
    quickstart(out, recipes)
    assert not (out / "rcm" / "checkpoints" / "iter_00000012" / "marker").exists()
    assert json.loads((out / qs.TEACHER_RECORD).read_text()) == qs.teacher_identity(out / "teacher")
