"""The one assertion of the broken-recipe / broken-command-line corpus (tests/rcm_registry/commands/)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rcm_registry.testing.cli import CliResult


def assert_user_error(result: CliResult, named: Iterable[str], absent: Iterable[Path] = (), code: int = 2) -> None:
    """``result`` exited with ``code`` (a user error: 2), its stderr names every string of ``named`` (the YAML
    path, the file) and holds no traceback, and none of the paths in ``absent`` (run directory, output file)
    was created."""
    assert result.code == code, f"exit {result.code}, expected {code}; stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    for text in named:
        assert text in result.err, f"{text!r} not in stderr:\n{result.err}"
    for path in absent:
        assert not Path(path).exists(), f"{path} was created"
