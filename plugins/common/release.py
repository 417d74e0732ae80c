"""The rCM release's checkpoints (github.com/NVlabs/rcm): which network of one a recipe role takes.

What the release writes (its trainer, ``scripts/dcp_to_pth.py`` and inference scripts were read for this):

* its trainer's model state dict holds every network under a prefix (:data:`~rcm_plugins.common.weights.
  RELEASE_PREFIXES`): ``net.`` the student, ``net_ema.`` the student's EMA, ``net_fake_score.`` the fake
  score. After the prefix come the release's own ``WanModel`` parameter names, which are native Wan2.1's
  except ``patch_embedding`` (a Linear over flattened patches there, a Conv3d natively: the Wan family
  maps it). TransformerEngine attention adds ``*._extra_state`` entries, which are not parameters;
* its trainer saves DCP directories: ``checkpoints/iter_N/model`` holds the networks, its sibling folders
  (``optim_*``, ``scheduler_*``, ``trainer``) training state, never read here;
* its single-file checkpointer saves ``{"model": ..., "optimizer": ..., "scheduler": ..., ...}``; only
  ``model`` is read (see :func:`~rcm_plugins.common.weights.release_model_part`);
* the published student checkpoints (``rCM_Wan2.1_T2V_1.3B_480p.pt``, ...) are flat ``.pt`` files: the EMA
  stored under ``net.``, bf16.

Which prefix a role takes (``weights: {role, ema}``, the same words as for an rcm run directory):

* ``student`` (the default): with ``ema`` (the default) ``net_ema.`` when the checkpoint has it, else
  ``net.`` (a published ``.pt`` holds the EMA there); with ``ema: false`` ``net.``;
* ``teacher``: the same as ``student``. The release's teacher checkpoints (``Wan2.1-T2V-1.3B.dcp``) are
  single networks under ``net.``, and its trainer reads a teacher from ``net_ema.`` first too;
* ``fake_score``: ``net_fake_score.`` (``ema`` does not apply: the release keeps no EMA of it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import attrs
from rcm_plugins.common import weights
from torch import Tensor

from rcm_registry.errors import CheckpointError

Role = Literal["student", "teacher", "fake_score"]
ROLES: tuple[Role, ...] = ("student", "teacher", "fake_score")
STUDENT, STUDENT_EMA, FAKE_SCORE = weights.RELEASE_PREFIXES
#: Keys inside a network that are not parameters (TransformerEngine's per-module state).
NOT_PARAMETERS = re.compile(r"(^|\.)_extra_state$")


def candidate_prefixes(role: Role | None, ema: bool | None) -> tuple[str, ...]:
    """The prefixes ``role`` takes, in the order they are tried (see the module docstring)."""
    if role == "fake_score":
        if ema:
            raise CheckpointError("weights.ema: the rCM release keeps no EMA of the fake score (role fake_score)")
        return (FAKE_SCORE,)
    return (STUDENT,) if ema is False else (STUDENT_EMA, STUDENT)


@attrs.frozen
class ReleaseCheckpoint:
    """What a release checkpoint holds, opened without reading its tensors.

    ``shapes``: every model key (prefix included) with its shape (None: a non-tensor entry, as DCP stores
    ``_extra_state``); ``read(keys)`` reads those tensors.
    """

    source: str
    shapes: Mapping[str, tuple[int, ...] | None]
    read: Callable[[list[str]], dict[str, Tensor]]

    def prefixes(self) -> dict[str, int]:
        """The network prefixes found, with how many keys each has."""
        found: dict[str, int] = {}
        for key in self.shapes:
            prefix = next((p for p in weights.RELEASE_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                found[prefix] = found.get(prefix, 0) + 1
        return found

    def select(self, role: Role | None, ema: bool | None) -> str:
        """The prefix ``role`` takes here; a :class:`CheckpointError` listing what there is when none fits,
        or when keys outside every network prefix are found (strict: nothing unknown is skipped)."""
        unknown = sorted(k for k in self.shapes if not k.startswith(weights.RELEASE_PREFIXES))
        if unknown:
            shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
            raise CheckpointError(
                f"{self.source}: keys outside the rCM release's network prefixes "
                f"({', '.join(weights.RELEASE_PREFIXES)}): {shown}"
            )
        found = self.prefixes()
        wanted = candidate_prefixes(role, ema)
        for prefix in wanted:
            if found.get(prefix):
                return prefix
        held = ", ".join(f"{p} ({n} keys)" for p, n in found.items()) or "no network"
        raise CheckpointError(
            f"{self.source}: no {role or 'student'}{' EMA' if ema and role != 'fake_score' else ''} network here "
            f"(looked for {' or '.join(wanted)}); it holds {held}: set weights.role / weights.ema to pick one"
        )

    def network(self, role: Role | None, ema: bool | None) -> dict[str, Tensor]:
        """The tensors of the network ``role`` takes, without their prefix, ``_extra_state`` left out."""
        prefix = self.select(role, ema)
        keys = [k for k, shape in self.shapes.items() if k.startswith(prefix) and not NOT_PARAMETERS.search(k)]
        stored = self.read(keys)
        return {k[len(prefix) :]: v for k, v in stored.items()}


def open_release(path: str | Path) -> ReleaseCheckpoint:
    """A release checkpoint: a DCP directory (or a trainer checkpoint folder with ``model/``), or a ``.pt``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    directory = weights.dcp_directory(p)
    if directory is not None:
        return ReleaseCheckpoint(
            source=str(directory),
            shapes=weights.dcp_entries(directory),
            read=lambda keys: weights.read_dcp_tensors(directory, keys),
        )
    if p.is_dir():
        raise CheckpointError(f"{p}: not a DCP checkpoint directory (no {weights.DCP_METADATA}, nor model/)")
    # Mapped, not read: opening (to check a recipe) costs only the pickle; reading copies the chosen tensors.
    state = weights.release_model_part(weights.load_torch_file(p, mmap=True), str(p))
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor) and not NOT_PARAMETERS.search(str(k)))
    if bad:
        raise CheckpointError(f"{p}: entries that are not tensors: {', '.join(bad[:8])}")
    shapes = {str(k): tuple(v.shape) if isinstance(v, Tensor) else None for k, v in state.items()}
    return ReleaseCheckpoint(source=str(p), shapes=shapes, read=lambda keys: {k: state[k].clone() for k in keys})


def read_network(path: str | Path, role: Role | None = None, ema: bool | None = None) -> dict[str, Tensor]:
    """The tensors of network ``role`` of a release checkpoint, keys without the prefix (see the module
    docstring for which prefix that is)."""
    return open_release(path).network(role, ema)


def with_prefix(state: Mapping[str, Tensor], prefix: str = STUDENT) -> dict[str, Tensor]:
    """A network's state dict in the release's layout: every key under ``prefix`` (``net.``, what the
    release's inference scripts load)."""
    if prefix not in weights.RELEASE_PREFIXES:
        raise ValueError(f"prefix must be one of {', '.join(weights.RELEASE_PREFIXES)}, got {prefix!r}")
    return {f"{prefix}{k}": v for k, v in state.items()}
