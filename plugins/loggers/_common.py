"""What the optional trackers share: the check that their package is installed (without importing it, which is
slow), and the numbers of a record they can plot."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import Any


def require_package(module: str, extra: str, logger: str) -> None:
    """A ValueError (a recipe problem at the logger's path) naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"logger {logger!r} needs the {module} package, which is not installed: pip install -e '.[{extra}]' "
            f"(or pip install 'rcm-registry[{extra}]')"
        )


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``record`` (the phase name and NaNs left out: a scalar chart cannot show them)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out
