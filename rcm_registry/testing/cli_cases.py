"""The assertion every broken-recipe / broken-command-line case makes about what ``rcm`` did."""

from __future__ import annotations

from pathlib import Path

from rcm_registry.testing.cli import CliResult


def tree(root: Path) -> set[Path]:
    """Every file and folder under ``root``."""
    return set(root.rglob("*"))


def assert_user_error(result: CliResult, named: str, root: Path, before: set[Path], code: int = 2) -> None:
    """Exit ``code``, ``named`` (a YAML path, file or option) in stderr, no traceback, and nothing new under
    ``root`` since ``before`` (``tree(root)`` taken before the command)."""
    assert result.code == code, f"exit {result.code}, expected {code}\n{result.err}"
    assert named in result.err, f"{named!r} not in stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    left = sorted(str(p.relative_to(root)) for p in tree(root) - before)
    assert not left, f"left behind: {left}"
