"""Reading a network family's checkpoint: the architecture from its config.json, the tensors into the network.

Shared by every network family. A family knows its own config.json dialects and key tables; what is the
same for all of them lives here: which dialect a config.json is in, reporting a bad architecture against
the file it came from, stripping wrapper prefixes, and strict loading in either key layout, so that every
missing, unexpected or mis-shaped key is named as it is in the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from rcm_plugins.common import release, weights
from rcm_plugins.common.export import Format
from rcm_plugins.common.keys import KeyMap, strip_shared_prefix
from torch import Tensor, nn

from rcm_registry import state_dicts
from rcm_registry.errors import CheckpointError

#: The ``format`` a recipe may give for its weights: ``auto`` tells the layouts apart. ``rcm-release``: the
#: rCM release's ``net.``-prefixed ``.pt`` files and DCP directories, for a family that maps them.
WeightsFormat = Literal["auto", "native", "diffusers", "rcm-release"]
RELEASE: WeightsFormat = "rcm-release"

A = TypeVar("A")


def checked_arch(arch: Callable[..., A], source: str, **fields: Any) -> A:
    """``arch(**fields)``, its ValueError (an inconsistent architecture) turned into a CheckpointError that
    names ``source``, the config.json the fields were read from."""
    try:
        return arch(**fields)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


def arch_from_config_file(
    path: str | Path,
    format: WeightsFormat,
    *,
    diffusers_class: str,
    detect_format: Callable[[Path], Format],
    from_diffusers: Callable[..., A],
    from_native: Callable[..., A],
    sizes: str,
) -> A:
    """The architecture described by the config.json of a checkpoint directory (or next to a file).

    A config.json naming ``diffusers_class``, or one without ``_class_name`` in a checkpoint read as
    diffusers, goes to ``from_diffusers(config, source=...)``; any other to ``from_native``. ``sizes``
    lists the family's named sizes for the error when there is no config.json.
    """
    p = Path(path)
    config = weights.read_config(p)
    if config is None:
        raise CheckpointError(
            f"{p}: no config.json to take the architecture from: give `size` ({sizes}) or the "
            "architecture fields in the network config"
        )
    source = str(p / weights.CONFIG_NAME if p.is_dir() else p.parent / weights.CONFIG_NAME)
    kind = format if format != "auto" else detect_format(p)
    if config.get("_class_name") == diffusers_class or (kind == "diffusers" and "_class_name" not in config):
        return from_diffusers(config, source=source)
    return from_native(config, source=source)


def read_state(
    path: str | Path,
    format: WeightsFormat,
    *,
    prefixes: tuple[str, ...],
    detect_format: Callable[[str | Path, Mapping[str, Tensor]], Format],
    from_release: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    role: release.Role | None = None,
    ema: bool | None = None,
) -> tuple[dict[str, Tensor], Format]:
    """A checkpoint's tensors as stored, without the first wrapper prefix of ``prefixes`` every key
    carries, and the key layout they are in (``format``, or detected from the file and the keys).

    An rCM release checkpoint (``format: rcm-release``, or detected) gives network ``role`` (``ema``) of it,
    turned into the native layout by ``from_release``; a family without one has no release checkpoints.
    ``role`` and ``ema`` choose among a release checkpoint's networks and mean nothing for other layouts.
    """
    if is_release(path, format):
        if from_release is None:
            raise CheckpointError(
                f"{path}: an rCM release checkpoint (net.-prefixed), and the release publishes none for this "
                "network family (it has Wan2.1 ones)"
            )
        return from_release(release.read_network(path, role, ema)), "native"
    check_no_release_choice(path, format, role, ema)
    state = strip_shared_prefix(weights.read_state_dict(path), prefixes)
    kind: Format = format if format != "auto" else detect_format(path, state)
    return state, kind


def is_release(path: str | Path, format: WeightsFormat) -> bool:
    """Whether ``path`` is read as an rCM release checkpoint: ``format: rcm-release``, or detected."""
    return format == RELEASE or (format == "auto" and weights.is_rcm_release(path))


def check_no_release_choice(path: str | Path, format: str, role: str | None, ema: bool | None) -> None:
    """Refuse ``role`` / ``ema`` for a checkpoint that is not the release's: they would be silently ignored."""
    given = [k for k, v in (("role", role), ("ema", ema)) if v is not None]
    if given:
        kind = f"a {format} checkpoint" if format != "auto" else "not an rCM release checkpoint"
        verb = "chooses" if len(given) == 1 else "choose"
        raise CheckpointError(
            f"{path}: weights.{' and weights.'.join(given)} {verb} a network of an rcm run directory or of an "
            f"rCM release checkpoint (format rcm-release), and this is {kind}"
        )


def load_state(
    net: nn.Module,
    state: Mapping[str, Tensor],
    kind: Format,
    *,
    keys: KeyMap,
    source: str,
    assign: bool,
    diffusers_ignored: Sequence[str] = (),
    native_ignored: Sequence[str] = (),
) -> None:
    """Load ``state`` (in the ``kind`` layout) into ``net`` strictly.

    Diffusers keys are checked in diffusers' own names before renaming, so the error names them as they
    are in the file. ``diffusers_ignored`` / ``native_ignored``: regular expressions of keys a file of that
    layout may carry that are not network parameters.
    """
    if kind == "diffusers":
        expected = {keys.native_to_diffusers_key(k): v.shape for k, v in net.state_dict().items()}
        state_dicts.check_state_dict(expected, state, source=source, ignore_unexpected=diffusers_ignored)
        state = keys.from_diffusers({k: v for k, v in state.items() if k in expected})
        state_dicts.load_strict(net, state, source=source, assign=assign)
    else:
        state_dicts.load_strict(net, state, source=source, assign=assign, ignore_unexpected=native_ignored)
