"""Puts tests/plugins/common on the import path: the checks every network family's tests share live there
(test directories are not packages; pytest imports their modules by directory)."""

from __future__ import annotations

import sys
from pathlib import Path

_COMMON = str(Path(__file__).resolve().parents[1] / "common")
if _COMMON not in sys.path:
    sys.path.insert(0, _COMMON)
