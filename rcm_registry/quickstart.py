"""``rcm quickstart``: the whole CPU demo in one command.

Trains the 2-D teacher (unless its run already has a final checkpoint), distils it with rCM, then
samples the teacher (50 Euler steps with CFG) and the student (1, 2 and 4 steps), printing the
metrics and writing a picture for each.

Run again after a kill at any point it carries on: a finished run is kept, an interrupted one resumed
from its last checkpoint (or started again when it had none). A run whose recipe no longer has the
bundled recipe's values is trained again from scratch, and so is the student when the teacher it was
distilled from changed: ``OUT/rcm_teacher.json`` records the sha256 of the weight files of the teacher
checkpoint the student in ``OUT/rcm`` was started from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import rcm_registry
from rcm_registry.atomic import is_temporary, temporary_name, write_text_atomic
from rcm_registry.checksum import file_sha256
from rcm_registry.engine.checkpoint import Checkpoint, checkpoint_recipe, latest_checkpoint, resolve_checkpoint
from rcm_registry.engine.logs import get_logger
from rcm_registry.engine.pictures import samples_picture, save_png_atomic
from rcm_registry.engine.sampling import SampleResult, draw, open_checkpoint
from rcm_registry.engine.trainer import Trainer, prepare_run_dir, recipe_difference
from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

STUDENT_STEPS = (1, 2, 4)

#: Beside the student's run directory: which teacher checkpoint it is distilled from.
TEACHER_RECORD = "rcm_teacher.json"
#: The teacher checkpoint's files that decide what the student learns from.
TEACHER_FILES = ("model.safetensors", "ema.safetensors")


def find_recipes(explicit: str | None) -> Path:
    """The quickstart recipe folder: ``explicit``, ./recipes/quickstart, or the source checkout's."""
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path("recipes/quickstart"), Path(rcm_registry.__file__).resolve().parents[1] / "recipes/quickstart"]
    for folder in candidates:
        if (folder / "teacher.yaml").is_file() and (folder / "rcm.yaml").is_file():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise UserError(f"quickstart recipes not found (looked in: {tried}); pass --recipes DIR")


def _train(recipe_path: Path, run_dir: Path, overrides: list[str], progress: bool) -> None:
    """Train ``recipe_path`` into ``run_dir``; finished runs are kept, interrupted ones resumed, and runs of
    a recipe with other values trained again from scratch."""
    log = get_logger("rcm.quickstart")
    recipe = validate_recipe(load_recipe(recipe_path, overrides), registry(), str(recipe_path))
    existing = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if existing is not None:
        ckpt = Checkpoint(existing)
        diff = recipe_difference(checkpoint_recipe(ckpt), recipe)
        if diff is not None:
            log.warning("the recipe changed: training again from scratch", run_dir=str(run_dir), change=diff)
            _discard(run_dir)
            existing = None
        elif ckpt.iteration >= recipe.body.run.iterations:
            log.info("already trained", run_dir=str(run_dir))
            return
    elif run_dir.is_dir():
        _discard(run_dir)  # killed before its first checkpoint: nothing to keep
    resume_from = prepare_run_dir(run_dir, recipe, resume=existing is not None)
    trainer = Trainer(recipe, run_dir, progress=progress)
    if resume_from is not None:
        trainer.restore(resume_from)
    trainer.run()


def _discard(run_dir: Path) -> None:
    """Delete a run directory: renamed to a temporary name first, so a kill midway leaves nothing that
    looks like a run (:func:`_clean_leftovers` deletes the rest)."""
    trash = temporary_name(run_dir.with_name(f"{run_dir.name}.trash"))
    run_dir.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    if out.is_dir():
        for path in out.iterdir():
            if is_temporary(path):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def teacher_identity(teacher_dir: Path) -> dict[str, Any]:
    """The latest checkpoint of the teacher run and the sha256 of its weight files (from ``meta.json``,
    verified against the files)."""
    ckpt = resolve_checkpoint(teacher_dir)
    ckpt.verify()
    sums = ckpt.checksums or {}
    if not all(name in sums for name in TEACHER_FILES):  # a checkpoint from before checksums: hash the files
        sums = {name: file_sha256(ckpt.path / name) for name in TEACHER_FILES}
    return {"checkpoint": ckpt.path.name, "sha256": {name: sums[name] for name in TEACHER_FILES}}


def _recorded_teacher(record: Path) -> Any:
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # missing or cut by a kill: the student's teacher is unknown


def _distil(folder: Path, teacher_dir: Path, student_dir: Path, progress: bool) -> None:
    """Train the student on the teacher in ``teacher_dir``, from scratch when the student directory holds a
    student of another teacher (or of one it cannot tell)."""
    teacher = teacher_identity(teacher_dir)
    record = student_dir.with_name(TEACHER_RECORD)
    if student_dir.exists() and _recorded_teacher(record) != teacher:
        get_logger("rcm.quickstart").warning(
            "the teacher changed since the student was distilled: training the student again",
            run_dir=str(student_dir),
        )
        _discard(student_dir)
    write_text_atomic(record, json.dumps(teacher, indent=1) + "\n")
    _train(folder / "rcm.yaml", student_dir, [f"networks.teacher.weights.path={teacher_dir}"], progress)


def run_quickstart(out: Path, recipes: str | None, num: int, progress: bool) -> list[tuple[str, int, SampleResult]]:
    folder = find_recipes(recipes)
    log = get_logger("rcm.quickstart")
    teacher_dir, student_dir = out / "teacher", out / "rcm"
    _clean_leftovers(out)
    log.info("teacher", recipe=str(folder / "teacher.yaml"), run_dir=str(teacher_dir))
    _train(folder / "teacher.yaml", teacher_dir, [], progress)
    log.info("rCM student", recipe=str(folder / "rcm.yaml"), run_dir=str(student_dir))
    _distil(folder, teacher_dir, student_dir, progress)
    rows: list[tuple[str, int, SampleResult]] = []
    teacher = open_checkpoint(teacher_dir)
    result = draw(teacher, num, steps=50, seed=0)
    rows.append(("teacher (Euler, CFG)", 50, result))
    title = "teacher, 50 Euler steps with CFG"
    picture = samples_picture(result.samples, result.condition, teacher.dataset, title, result.metrics)
    save_png_atomic(picture, out / "teacher.png")
    student = open_checkpoint(student_dir)
    for steps in STUDENT_STEPS:
        result = draw(student, num, steps=steps, seed=0)
        rows.append(("rCM student", steps, result))
        title = f"rCM student, {steps} step(s)"
        img = samples_picture(result.samples, result.condition, student.dataset, title, result.metrics)
        save_png_atomic(img, out / f"rcm_{steps}step.png")
    return rows


def format_table(rows: list[tuple[str, int, SampleResult]]) -> str:
    names = sorted({k for _, _, r in rows for k in r.metrics})
    head = f"{'model':<22} {'steps':>5} " + " ".join(f"{n:>18}" for n in names) + f" {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for model, steps, result in rows:
        values = " ".join(f"{result.metrics.get(n, float('nan')):>18.4f}" for n in names)
        lines.append(f"{model:<22} {steps:>5} {values} {result.seconds:>8.3f}")
    return "\n".join(lines)
