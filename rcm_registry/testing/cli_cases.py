"""The one assertion of the broken-recipe and broken-run cases (tests/rcm_registry/commands/test_broken_*.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rcm_registry.testing.cli import CliResult


def assert_refused(result: CliResult, *named: str, not_created: Sequence[Path] = (), code: int = 2) -> None:
    """The command failed as a user error: exit ``code``, every string of ``named`` in stderr, no traceback,
    and none of the paths of ``not_created`` (a run directory, an output file) exists."""
    assert result.code == code, f"exit {result.code}, expected {code}\n{result.err}"
    assert "Traceback" not in result.err, result.err
    for text in named:
        assert text in result.err, f"{text!r} not in stderr:\n{result.err}"
    for path in not_created:
        assert not path.exists(), f"{path} was created"
