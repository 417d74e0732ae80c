"""Close-name hints for messages about unknown names (keys, components, kinds, roles, hooks)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def suggest(word: str, choices: Sequence[str]) -> str:
    """'; did you mean 'x'?' for the closest choices, else the list of choices when it is short, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if choices and len(choices) <= 12:
        return "; choose from " + ", ".join(repr(c) for c in sorted(choices))
    return ""
