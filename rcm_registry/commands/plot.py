"""``rcm plot RUN_DIR [--out FILE.png]``: a run's loss curves, gradient norms and learning rates (metrics.jsonl)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command
from rcm_registry.errors import UserError

NAME = "plot"
#: The picture's name in the run directory when ``--out`` is not given.
DEFAULT_NAME = "losses.png"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_plot,
        summary="Draw a run's loss curves from its metrics.jsonl as a PNG (needs matplotlib: the plot extra).",
        example="rcm plot runs/quickstart/rcm --out rcm_losses.png",
    )
    p.add_argument("run_dir", help="a run directory written by `rcm run` (its jsonl logger's metrics.jsonl)")
    p.add_argument("--out", default=None, help=f"FILE.png (default: RUN_DIR/{DEFAULT_NAME})")
    return p


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl``; a line cut short by a kill is skipped, any other bad line is an
    error naming the file and line."""
    import json

    from rcm_registry.engine.run_layout import METRICS_FILE

    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_FILE} (not a run directory, or its loggers leave out jsonl)")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line of a run killed while writing it
                continue
            raise UserError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
            raise UserError(f"{path}:{number}: expected an object with an integer 'iteration'")
        records.append(record)
    if not any(k == "loss" or k.startswith("loss/") for r in records for k in r):
        raise UserError(f"{path}: no losses logged yet")
    return records


def cmd_plot(args: argparse.Namespace) -> int:
    from rcm_registry.engine.pictures import save_png_atomic
    from rcm_registry.engine.plots import loss_curves_figure, require_matplotlib

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / DEFAULT_NAME
    if out.suffix != ".png":
        raise UserError(f"--out {out}: the file must end in .png")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    records = read_metrics(run_dir)
    require_matplotlib("rcm plot")
    save_png_atomic(loss_curves_figure(records, title=str(run_dir)), out)
    print(f"wrote {out}: {len(records)} logged iterations, up to iteration {records[-1]['iteration']}")
    return 0
