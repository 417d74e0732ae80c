"""``rcm env [--json]``: versions, CUDA devices and where the Triton kernels run (see rcm_registry.environment)."""

from __future__ import annotations

import argparse

from rcm_registry.commands._shared import add_command

NAME = "env"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_env,
        summary="Report versions, devices and where the Triton kernels run here (for bug reports and set-up checks).",
        example="rcm env --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_env(args: argparse.Namespace) -> int:
    import json

    from rcm_registry.environment import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
