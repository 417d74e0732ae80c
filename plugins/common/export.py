"""Writing a transformer network (or its state dict) as a diffusers or native checkpoint directory.

Shared by every network family: a family describes its two layouts with :class:`Layouts`, and
:func:`export_network` checks the state dict is complete, converts it and writes it atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from rcm_registry import weights

Format = Literal["diffusers", "native"]


@attrs.frozen
class Layouts:
    """How one network family maps to its checkpoint layouts.

    ``network`` is built as ``network(arch, attention=None)`` on the meta device to learn the expected
    keys and shapes; our parameter names are the native layout's, so only diffusers needs renaming.
    """

    network: type[nn.Module]
    to_diffusers: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    diffusers_config: Callable[[Any], dict[str, Any]]
    native_config: Callable[[Any], dict[str, Any]]


def export_network(
    layouts: Layouts,
    source: nn.Module | Mapping[str, Tensor],
    out: str | Path,
    *,
    format: Format,
    arch: Any,
    dtype: torch.dtype | None,
    overwrite: bool,
    max_shard_bytes: int,
) -> Path:
    """Write ``source`` in ``format``; the directory appears complete or not at all."""
    if format not in ("diffusers", "native"):
        raise ValueError(f"format must be 'diffusers' or 'native', got {format!r}")
    family = layouts.network.__name__
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
    weights.check_state_dict(expected, state, source="state dict to export")
    if format == "diffusers":
        state, config = layouts.to_diffusers(state), layouts.diffusers_config(arch)
    else:
        config = layouts.native_config(arch)
    return weights.write_checkpoint_directory(
        state, config, out, overwrite=overwrite, max_shard_bytes=max_shard_bytes, dtype=dtype
    )
