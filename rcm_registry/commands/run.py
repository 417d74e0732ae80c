"""``rcm run RECIPE [--set K=V ...] [--out DIR] [--resume]``: train a recipe into a run directory.

``--resume`` continues from the run's latest checkpoint, or starts from iteration 0 when there is none yet;
the rules for an existing directory are :func:`rcm_registry.engine.trainer.prepare_run_dir`'s.

Under ``torchrun -m rcm_registry.cli run`` every rank runs this command (see rcm_registry.distributed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command, add_set_argument, load_validated_recipe

NAME = "run"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_run,
        summary="Train a recipe into a run directory (checkpoints, metrics.jsonl).",
        example="rcm run recipes/quickstart/teacher.yaml --out runs/quickstart/teacher",
    )
    p.add_argument("recipe", help="path to a YAML recipe")
    add_set_argument(p)
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint (none yet: start from 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from rcm_registry.engine.logs import configure_console
    from rcm_registry.engine.trainer import Trainer, prepare_run_dir, start_run_dir

    recipe = load_validated_recipe(args.recipe, args.set)  # validation first: a broken recipe creates no run directory
    configure_console(args.verbose)
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    resume_from = prepare_run_dir(run_dir, recipe, resume=args.resume, create=False)
    # Built before the folder exists: a network or dataset that cannot be built leaves nothing behind.
    trainer = Trainer(recipe, run_dir, progress=not args.no_progress)
    if resume_from is None:
        start_run_dir(run_dir, recipe)
    else:
        trainer.restore(resume_from)
    final = trainer.run()
    from rcm_registry.distributed import is_main

    if is_main():  # under torchrun every rank gets here; one line is enough
        print(f"done: {run_dir} (checkpoint {final})" if final else f"done: {run_dir} (nothing left to train)")
    return 0
