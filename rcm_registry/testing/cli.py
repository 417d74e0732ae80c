"""Run the ``rcm`` CLI in-process (fast) or in a subprocess (real exit codes and signals)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Mapping

import attrs


@attrs.frozen
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """``rcm ARGS`` in this process; SystemExit from argparse is turned into the exit code."""
    from rcm_registry.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code=code, out=out.getvalue(), err=err.getvalue())


def run_cli_subprocess(
    *args: str, cwd: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 600
) -> CliResult:
    """``python -m rcm_registry.cli ARGS`` in a child process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "rcm_registry.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(code=proc.returncode, out=proc.stdout, err=proc.stderr)
