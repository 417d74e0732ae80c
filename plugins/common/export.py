"""Writing a transformer network (or its state dict) as a diffusers or native checkpoint directory, or as
the rCM release's ``net.``-prefixed ``.pt`` file.

Shared by every network family: a family describes its two layouts with :class:`Layouts`, and
:func:`export_network` checks the state dict is complete, converts it and writes it atomically; a network
class gets its ``net.export(...)`` (what ``rcm export`` calls) from :class:`ExportableNetwork`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.common import weights
from torch import Tensor, nn

from rcm_registry import state_dicts

Format = Literal["diffusers", "native"]
#: What ``export`` writes: a key layout's directory, or the rCM release's single ``.pt`` file.
ExportFormat = Literal["diffusers", "native", "rcm-release"]
RELEASE_SUFFIXES = (".pt", ".pth")


@attrs.frozen
class Layouts:
    """How one network family maps to its checkpoint layouts.

    ``network`` is built as ``network(arch, attention=None)`` on the meta device to learn the expected
    keys and shapes; our parameter names are the native layout's, so only diffusers needs renaming.
    ``to_release`` (None: the rCM release has no checkpoints of the family) maps a native state dict to the
    release's layout.
    """

    network: type[nn.Module]
    to_diffusers: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    diffusers_config: Callable[[Any], dict[str, Any]]
    native_config: Callable[[Any], dict[str, Any]]
    to_release: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] | None = None


def export_network(
    layouts: Layouts,
    source: nn.Module | Mapping[str, Tensor],
    out: str | os.PathLike[str],
    *,
    format: ExportFormat = "diffusers",
    arch: Any = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = weights.DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write ``source`` in ``format``; the directory (or file) appears complete or not at all (written
    under a temporary name, then renamed).

    Args:
        layouts: the network family's layouts.
        source: a ``layouts.network`` (its ``arch`` is used) or a state dict in our/native layout.
        out: the directory to create (``rcm-release``: the ``.pt``/``.pth`` file).
        format: ``diffusers``, ``native`` or ``rcm-release`` (one flat dict of ``net.``-prefixed tensors,
            what the release's inference scripts load with ``--dit_path``).
        arch: required when ``source`` is a state dict.
        dtype: cast floating tensors (e.g. ``torch.bfloat16``); default keeps their dtype.
        overwrite: replace an existing ``out``.
        max_shard_bytes: split into shards with an index above this size.
    """
    if format not in ("diffusers", "native", "rcm-release"):
        raise ValueError(f"format must be 'diffusers', 'native' or 'rcm-release', got {format!r}")
    family = layouts.network.__name__
    if format == "rcm-release":
        if layouts.to_release is None:
            raise ValueError(f"the rCM release has no {family} checkpoints, so there is no rcm-release layout for it")
        if Path(out).suffix not in RELEASE_SUFFIXES:
            raise ValueError(f"an rcm-release checkpoint is one file: name it FILE.pt (got {out})")
    if isinstance(source, nn.Module):
        if not isinstance(source, layouts.network):
            raise TypeError(f"expected a {family} or a state dict, got {type(source).__name__}")
        arch = arch or source.arch
        state: Mapping[str, Tensor] = source.state_dict()
    else:
        if arch is None:
            raise ValueError(f"exporting a state dict needs arch= (the architecture the {family} was trained with)")
        state = source
    with torch.device("meta"):  # expected keys and shapes, without allocating a copy of the network
        reference = layouts.network(arch, attention=None)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    state_dicts.check_state_dict(expected, state, source="state dict to export")
    if format == "rcm-release":
        assert layouts.to_release is not None
        return weights.write_torch_file(layouts.to_release(state), out, dtype=dtype, overwrite=overwrite)
    if format == "diffusers":
        state, config = layouts.to_diffusers(state), layouts.diffusers_config(arch)
    else:
        config = layouts.native_config(arch)
    return weights.write_checkpoint_directory(
        state, config, out, overwrite=overwrite, max_shard_bytes=max_shard_bytes, dtype=dtype
    )


class ExportableNetwork:
    """Gives a network class ``net.export(out, format=..., dtype=..., overwrite=...)``.

    The family's checkpoint module imports its network module (the layouts name the network class), so
    the class finds its layouts through :meth:`checkpoint_layouts`, which imports them when called.
    """

    @classmethod
    def checkpoint_layouts(cls) -> Layouts:
        raise NotImplementedError(f"{cls.__name__} does not say where its checkpoint layouts are")

    def export(
        self,
        out: str | os.PathLike[str],
        *,
        format: ExportFormat = "diffusers",
        dtype: torch.dtype | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write this network as a diffusers or native checkpoint directory of its family, or as an rCM
        release ``.pt`` file.

        See :func:`export_network`; the directory (or file) appears complete or not at all.
        """
        return export_network(self.checkpoint_layouts(), self, out, format=format, dtype=dtype, overwrite=overwrite)
