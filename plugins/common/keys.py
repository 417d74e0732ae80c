"""Renaming checkpoint keys between layouts by tables of module paths."""

from __future__ import annotations

from collections.abc import Mapping


def rename_by_prefix(name: str, table: Mapping[str, str]) -> str | None:
    """Rename by the longest table entry that is ``name`` itself or a dotted prefix of it (else None)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return ".".join([table[prefix], *parts[cut:]])
    return None


def convert_key(
    key: str,
    top: Mapping[str, str],
    block: Mapping[str, str],
    *,
    blocks_from: str = "blocks",
    blocks_to: str = "blocks",
) -> str:
    """Rename a parameter name: inside ``{blocks_from}.N.`` by the ``block`` table (and the block list to
    ``blocks_to``), elsewhere by the ``top`` table. Unknown names pass through unchanged."""
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == blocks_from and parts[1].isdigit():
        renamed = rename_by_prefix(".".join(parts[2:]), block)
        return f"{blocks_to}.{parts[1]}.{renamed if renamed is not None else '.'.join(parts[2:])}"
    renamed = rename_by_prefix(key, top)
    return key if renamed is None else renamed


def strip_shared_prefix(state: Mapping[str, object], prefixes: tuple[str, ...]) -> dict[str, object]:
    """Drop the first of ``prefixes`` that every key carries (checkpoints saved from a wrapper module)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)
