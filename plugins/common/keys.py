"""Renaming checkpoint keys between layouts by tables of module paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

#: A state dict's values (tensors, or anything keyed like one).
T = TypeVar("T")


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


class KeyMap:
    """Both directions between a native key layout and diffusers', from the native → diffusers tables.

    Every family's tables are written once, native → diffusers; the way back is their inverse, so the
    tables must be one-to-one (a repeated target would make the way back ambiguous).

    Args:
        top: module paths outside the block list (native → diffusers).
        block: module paths inside one block (native → diffusers).
        native_blocks: the native name of the block list.
        diffusers_blocks: diffusers' name of the block list.
    """

    def __init__(
        self,
        top: Mapping[str, str],
        block: Mapping[str, str],
        *,
        native_blocks: str = "blocks",
        diffusers_blocks: str = "blocks",
    ) -> None:
        self._top, self._block = dict(top), dict(block)
        self._top_back, self._block_back = _inverse(top, "top"), _inverse(block, "block")
        self._native_blocks, self._diffusers_blocks = native_blocks, diffusers_blocks

    def native_to_diffusers_key(self, key: str) -> str:
        """A native (= our) parameter name in diffusers' layout; unknown names pass through unchanged."""
        return convert_key(
            key, self._top, self._block, blocks_from=self._native_blocks, blocks_to=self._diffusers_blocks
        )

    def diffusers_to_native_key(self, key: str) -> str:
        """A diffusers parameter name in the native (= our) layout; unknown names pass through unchanged."""
        return convert_key(
            key, self._top_back, self._block_back, blocks_from=self._diffusers_blocks, blocks_to=self._native_blocks
        )

    def to_diffusers(self, state_dict: Mapping[str, T]) -> dict[str, T]:
        """Rename a native/our state dict into the diffusers layout."""
        return {self.native_to_diffusers_key(k): v for k, v in state_dict.items()}

    def from_diffusers(self, state_dict: Mapping[str, T]) -> dict[str, T]:
        """Rename a diffusers state dict into the native/our layout."""
        return {self.diffusers_to_native_key(k): v for k, v in state_dict.items()}


def _inverse(table: Mapping[str, str], which: str) -> dict[str, str]:
    back = {v: k for k, v in table.items()}
    if len(back) != len(table):
        repeated = sorted({v for v in table.values() if list(table.values()).count(v) > 1})
        raise ValueError(f"the {which} key table is not one-to-one: {', '.join(repeated)} named more than once")
    return back
