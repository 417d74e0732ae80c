"""The one assertion of the broken-recipe / broken-command-line corpus (tests/rcm_registry/commands/)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rcm_registry.testing.cli import CliResult


def tree(root: Path) -> set[Path]:
    """Every file and folder under ``root`` (take it before the command, pass it as ``before``)."""
    return set(root.rglob("*"))


def assert_user_error(
    result: CliResult,
    named: str | Iterable[str],
    root: Path | None = None,
    before: set[Path] | None = None,
    code: int = 2,
    *,
    absent: Iterable[Path] = (),
) -> None:
    """``result`` exited with ``code`` (a user error: 2), its stderr names ``named`` (each string, when several:
    the YAML path, the file, the option) and holds no traceback; nothing is new under ``root`` since
    ``before`` (``tree(root)``), and none of the ``absent`` paths (run directory, output file) exists."""
    assert result.code == code, f"exit {result.code}, expected {code}; stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    for text in [named] if isinstance(named, str) else named:
        assert text in result.err, f"{text!r} not in stderr:\n{result.err}"
    if root is not None:
        left = sorted(str(p.relative_to(root)) for p in tree(root) - (before or set()))
        assert not left, f"left behind: {left}"
    for path in absent:
        assert not Path(path).exists(), f"{path} was created"
