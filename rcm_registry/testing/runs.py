"""A run that trains in about a second, for tests of run directories (resume, damage, faults): the quickstart
teacher shrunk by ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

#: The recipe the overrides shrink (in the source checkout).
TEACHER_RECIPE = str(Path(__file__).resolve().parents[2] / "recipes/quickstart/teacher.yaml")

#: ``KEY=VALUE`` overrides: a 16-wide one-layer MLP, batches of 32, 20 iterations, a checkpoint every 5
#: (the newest 2 kept), metrics every iteration.
TINY_TEACHER = (
    "networks.teacher.width=16",
    "networks.teacher.depth=1",
    "run.batch_size=32",
    "run.iterations=20",
    "run.checkpoint_every=5",
    "run.keep_checkpoints=2",
    "run.log_every=1",
)


def tiny_args(*extra: str) -> list[str]:
    """``rcm run`` arguments after the recipe: ``--set`` for each of :data:`TINY_TEACHER` and ``extra``
    (later ones win), and ``--no-progress``."""
    return [*(arg for value in (*TINY_TEACHER, *extra) for arg in ("--set", value)), "--no-progress"]
