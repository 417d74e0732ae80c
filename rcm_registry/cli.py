"""The ``rcm`` command line: builds the parser from the command modules (rcm_registry.commands) and dispatches.

User errors print one readable message and exit with code 2; a diverged training run prints one line and
exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from rcm_registry import __version__
from rcm_registry.commands import (
    convert_data,
    env,
    export,
    generate,
    list_components,
    plot,
    plugins,
    quickstart,
    run,
    sample,
    synth,
    validate,
)
from rcm_registry.errors import TrainingDiverged, UserError

EXIT_USER_ERROR = 2
#: A valid run whose training diverged (not a user error, but no traceback either).
EXIT_DIVERGED = 1

#: In the order of `rcm --help` and of the README's command table.
COMMANDS: tuple[ModuleType, ...] = (
    list_components,
    plugins,
    env,
    validate,
    run,
    export,
    quickstart,
    sample,
    plot,
    synth,
    convert_data,
    generate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcm",
        description="Distil diffusion models into few-step students with rCM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rcm-registry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
