"""``rcm quickstart [--out DIR]``: the CPU demo (see rcm_registry.quickstart)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command

NAME = "quickstart"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_quickstart,
        summary="Train the 2-D teacher (if needed), distil it with rCM, and compare samples at 1/2/4 steps.",
        example="rcm quickstart --out runs/quickstart",
    )
    p.add_argument("--out", default="runs/quickstart", help="folder for the two runs and the pictures")
    p.add_argument("--recipes", default=None, help="folder with teacher.yaml and rcm.yaml (default: the bundled)")
    p.add_argument("--num", type=int, default=2000, help="samples per evaluation (default 2000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    return p


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rcm_registry.engine.logs import configure_console
    from rcm_registry.quickstart import format_table, run_quickstart

    configure_console(args.verbose)
    out = Path(args.out)
    rows = run_quickstart(out, args.recipes, args.num, progress=not args.no_progress)
    print(format_table(rows))
    print(f"pictures: {out}/teacher.png, {out}/rcm_1step.png, {out}/rcm_2step.png, {out}/rcm_4step.png")
    return 0
