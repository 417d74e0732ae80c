"""``rcm quickstart``: the whole CPU demo in one command.

Trains the 2-D teacher (unless its run already has a final checkpoint), distils it with rCM, then
samples the teacher (50 Euler steps with CFG) and the student (1, 2 and 4 steps), printing the
metrics and writing a picture for each.
"""

from __future__ import annotations

from pathlib import Path

import rcm_registry
from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.engine.logs import get_logger
from rcm_registry.engine.pictures import samples_picture, save_png_atomic
from rcm_registry.engine.sampling import SampleResult, draw, open_checkpoint
from rcm_registry.engine.trainer import Trainer, prepare_run_dir
from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

STUDENT_STEPS = (1, 2, 4)


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
    """Train ``recipe_path`` into ``run_dir``; finished runs are kept, interrupted ones resumed."""
    recipe = validate_recipe(load_recipe(recipe_path, overrides), registry(), str(recipe_path))
    existing = latest_checkpoint(run_dir) if run_dir.exists() else None
    if existing is not None and Checkpoint(existing).iteration >= recipe.body.run.iterations:
        get_logger("rcm.quickstart").info("already trained", run_dir=str(run_dir))
        return
    resume_from = prepare_run_dir(run_dir, recipe, resume=existing is not None)
    trainer = Trainer(recipe, run_dir, progress=progress)
    if resume_from is not None:
        trainer.restore(resume_from)
    trainer.run()


def run_quickstart(out: Path, recipes: str | None, num: int, progress: bool) -> list[tuple[str, int, SampleResult]]:
    folder = find_recipes(recipes)
    log = get_logger("rcm.quickstart")
    teacher_dir, student_dir = out / "teacher", out / "rcm"
    log.info("teacher", recipe=str(folder / "teacher.yaml"), run_dir=str(teacher_dir))
    _train(folder / "teacher.yaml", teacher_dir, [], progress)
    log.info("rCM student", recipe=str(folder / "rcm.yaml"), run_dir=str(student_dir))
    _train(folder / "rcm.yaml", student_dir, [f"networks.teacher.weights.path={teacher_dir}"], progress)
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
