"""The assertion every broken-recipe / broken-command-line case makes (tests/rcm_registry/commands/test_broken_*)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rcm_registry.testing.cli import CliResult


def assert_refused(result: CliResult, expected: Iterable[str], absent: Iterable[Path] = (), code: int = 2) -> None:
    """``result`` is a refusal: exit ``code``, every ``expected`` text in stderr, no traceback, none of ``absent``
    (run directories, output files) created."""
    assert result.code == code, f"exit {result.code}, expected {code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    for text in expected:
        assert text in result.err, f"{text!r} not in stderr:\n{result.err}"
    for path in absent:
        assert not path.exists(), f"{path} was created by a refused command"
