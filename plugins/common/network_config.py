"""The recipe-config plumbing every network family shares, from config fields to a built network.

A family's config names a ``size`` preset, or ``weights`` whose config.json gives the architecture, or
every required architecture field; any field set besides overrides what the size or the file says. The
rules (and their error messages) are the same for every family; what differs is passed in: the family's
architecture class, presets, config.json reader and component names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
import torch
from rcm_plugins.common import release
from rcm_plugins.common.loading import WeightsFormat, check_no_release_choice, is_release
from rcm_plugins.common.weights import weight_files

from rcm_registry import schema
from rcm_registry.errors import CheckpointError
from rcm_registry.protocols import InputSpec

N = TypeVar("N")


@attrs.define
class CheckpointWeights:
    """Where the weights come from. ``format: auto`` tells the layouts apart (diffusers, native, and the rCM
    release's ``.pt`` files and DCP directories).

    An rCM release checkpoint holds several networks; ``role`` and ``ema`` pick one (see
    :mod:`rcm_plugins.common.release`: default the student's EMA when there is one) and are refused for
    other layouts. A release checkpoint that exists is opened when the recipe is checked, before anything
    is written: an unsafe pickle, a damaged file or a role it does not hold is a recipe problem.
    """

    path: str
    format: WeightsFormat = "auto"
    role: release.Role | None = None
    ema: bool | None = None

    def __attrs_post_init__(self) -> None:
        try:
            if self.format in ("native", "diffusers"):
                check_no_release_choice(self.path, self.format, self.role, self.ema)
            elif Path(self.path).exists():
                if is_release(self.path, self.format):
                    release.open_release(self.path).select(self.role, self.ema)
                else:
                    check_no_release_choice(self.path, self.format, self.role, self.ema)
        except CheckpointError as exc:  # reported with the recipe's other problems, at the weights' YAML path
            raise ValueError(str(exc)) from None

    def release_choice(self) -> dict[str, Any]:
        """``role`` / ``ema`` as keyword arguments of a family's ``load_weights`` (only those given)."""
        return {k: v for k, v in (("role", self.role), ("ema", self.ema)) if v is not None}


class NetworkConfig(Protocol):
    """What these helpers read of a family's config (read-only, so that a Literal ``size`` fits)."""

    @property
    def size(self) -> str | None: ...

    @property
    def weights(self) -> CheckpointWeights | None: ...


def optional_positive() -> Any:
    """An architecture field: None (taken from the size or the weights) unless the recipe sets it, > 0."""
    return attrs.field(default=None, validator=schema.positive)


def check_architecture_source(config: NetworkConfig, required: tuple[str, ...], sizes: Iterable[str]) -> None:
    """Refuse a config that gives neither a size, nor weights, nor every one of the ``required`` fields."""
    if config.size is None and config.weights is None:
        absent = [f for f in required if getattr(config, f) is None]
        if absent:
            raise ValueError(
                f"give `size` ({', '.join(sizes)}), `weights` (a checkpoint with config.json), or all of "
                f"{', '.join(required)} (missing: {', '.join(absent)})"
            )


def reads_weights_config(config: NetworkConfig, required: tuple[str, ...]) -> bool:
    """Whether the architecture comes from the weights' config.json: weights, no size, and some of the
    ``required`` fields unset (with all of them set, the fields alone describe it)."""
    return (
        config.weights is not None and config.size is None and not all(getattr(config, f) is not None for f in required)
    )


def arch_fields(
    config: NetworkConfig,
    arch: type,
    required: tuple[str, ...],
    *,
    defaults: Mapping[str, Any],
    preset: Callable[[str], Mapping[str, Any]],
    from_weights: Callable[[CheckpointWeights], Any],
) -> dict[str, Any]:
    """The fields of the attrs class ``arch``: ``defaults``, then the ``size`` preset, else the weights'
    config.json (``from_weights``, an ``arch`` instance); then every field the config sets overrides them.

    Fields of ``arch`` that the config does not have (derived ones, such as a kind flag) are not overrides.
    """
    names = tuple(f.name for f in attrs.fields(arch))
    fields = dict(defaults)
    if config.size is not None:
        fields.update(preset(config.size))
    elif reads_weights_config(config, required):
        assert config.weights is not None
        found = from_weights(config.weights)
        fields.update({f: getattr(found, f) for f in names})
    fields.update({f: getattr(config, f) for f in names if getattr(config, f, None) is not None})
    return fields


def check_weights_kind(
    config: NetworkConfig,
    required: tuple[str, ...],
    *,
    wanted: bool,
    found: Callable[[CheckpointWeights], bool],
    names: tuple[str, str],
) -> None:
    """Refuse weights of the family's other kind (T2V weights for the I2V network, ...) when the
    architecture comes from their config.json: the layers would not fit, and the error would not say why.

    ``wanted``: the config's kind flag; ``found(weights)``: the flag the weights' config.json gives;
    ``names``: the component names of the kind without and with the flag.
    """
    if reads_weights_config(config, required):
        assert config.weights is not None
        kind = found(config.weights)
        if kind != wanted:
            raise CheckpointError(f"{config.weights.path}: this is a checkpoint for {names[kind]}, not {names[wanted]}")


def build_network(make: Callable[[], N], weights: CheckpointWeights | None, load_weights: Callable[..., object]) -> N:
    """``make()``; with weights, on the meta device first so the parameters are allocated once, when
    ``load_weights(net, path, format, assign=True)`` puts the file's tensors in their place (with ``role`` /
    ``ema`` when the weights give them: :meth:`CheckpointWeights.release_choice`)."""
    if weights is None:
        return make()
    with torch.device("meta"):
        net = make()
    load_weights(net, weights.path, weights.format, assign=True, **weights.release_choice())
    return net


def check_checkpoint_path(weights: CheckpointWeights | None) -> None:
    """A CheckpointError when ``weights.path`` is not there, or is a file of no weights format we read
    (the format detection of :func:`rcm_plugins.common.weights.weight_files`). A folder is the family's to
    read (a checkpoint folder, a repository of several)."""
    if weights is None:
        return
    path = Path(weights.path)
    if not path.exists():
        raise CheckpointError(f"weights.path: {path}: no such file or directory")
    if path.is_file():
        weight_files(path)


def latent_input(channels: int, patch_size: Sequence[int], *, channel_name: str = "in_channels") -> InputSpec:
    """A (C, T, H, W) latent input of ``channels`` channels whose sizes divide by ``patch_size``."""
    return InputSpec(
        shape=(channels, None, None, None), names=(channel_name, "T", "H", "W"), multiple_of=(1, *patch_size)
    )


def token_input(width: int, *, width_name: str = "text_dim", length: int | None = None) -> InputSpec:
    """An (L, D) token sequence of width ``width`` (any length unless ``length``)."""
    return InputSpec(shape=(length, width), names=("L", width_name))


def meta_parameter_count(make: Callable[[], torch.nn.Module]) -> int:
    """The parameters of ``make()``, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        net = make()
    return sum(p.numel() for p in net.parameters())
