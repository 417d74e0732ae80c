"""Checkpoints: written to a temporary folder, fsynced, then renamed, so a kill never leaves a
half-written one where a resume would look.

Layout of ``RUN/checkpoints/iter_00000100/``::

    model.safetensors   trained networks, keys "ROLE.param"
    ema.safetensors     EMA shadows of trained networks that have one, keys "ROLE.param"
    optim.pt            optimiser states by phase (torch.save; read with weights_only=True)
    state.pt            iteration, phase step counts, RNG states, dataset position
    recipe.yaml         the resolved recipe the run was started with
    meta.json           written last: its presence marks the checkpoint complete

``RUN/checkpoints/latest`` names the newest complete checkpoint.

With a parallel strategy that shards parameters (``fsdp2``) every rank also writes its shards of the
trained networks, their EMAs and the optimiser states into ``sharded/`` through
``torch.distributed.checkpoint`` (resumable on another number of ranks), and ``optim.pt`` is left out;
``model.safetensors`` and ``ema.safetensors`` are then the consolidated full tensors gathered on rank 0,
so ``rcm sample`` and ``rcm export`` read every checkpoint the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from rcm_registry.atomic import TMP_MARK, atomic_directory, is_temporary, publish_directory, write_text_atomic
from rcm_registry.engine.run_layout import LATEST, META, PREFIX, checkpoint_root, is_complete, latest_checkpoint
from rcm_registry.errors import CheckpointError, UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.recipe.load import apply_overrides
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe


def _flat(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    *,
    models: dict[str, dict[str, torch.Tensor]],
    emas: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, Any],
    state: dict[str, Any],
    recipe: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``iteration`` atomically and prune to the newest ``keep``; returns its folder."""
    root = checkpoint_root(run_dir)
    name = f"{PREFIX}{iteration:08d}"
    final = root / name
    # overwrite: re-writing the same iteration (e.g. a resumed run ending where it stopped)
    with atomic_directory(final, overwrite=True) as tmp:
        _write_files(tmp, models, emas, state, recipe, iteration, optimizers=optimizers)
    _point_latest(root, name, keep)
    return final


SHARDED = "sharded"


def full_tensors(state: dict[str, torch.Tensor], *, keep: bool) -> dict[str, torch.Tensor]:
    """``state`` with sharded tensors (DTensors) gathered whole, one tensor at a time; a collective.

    Every rank must call it; only where ``keep`` (rank 0) are the gathered tensors kept (on the CPU),
    so no rank ever holds more than one extra full tensor.
    """
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            out[key] = whole.detach().to("cpu")
    return out


def save_sharded_checkpoint(
    run_dir: Path,
    iteration: int,
    *,
    sharded: dict[str, Any],
    models: dict[str, dict[str, torch.Tensor]],
    emas: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    recipe: dict[str, Any],
    keep: int,
    main: bool,
    barrier: Callable[[], None],
) -> Path:
    """The multi-rank form of :func:`save_checkpoint`; every rank calls it.

    ``sharded`` (nested dicts of sharded tensors and objects) goes through torch.distributed.checkpoint,
    written by all ranks into one temporary folder; ``models``/``emas`` are the consolidated tensors
    (only rank 0's are written). Rank 0 renames the folder once every rank has finished, so a kill at
    any point leaves either the complete checkpoint or none.
    """
    import torch.distributed.checkpoint as dcp

    root = checkpoint_root(run_dir)
    name = f"{PREFIX}{iteration:08d}"
    final = root / name
    tmp = root / f".{name}{TMP_MARK}sharded"  # one name for every rank (their pids differ)
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    dcp.save(sharded, checkpoint_id=str(tmp / SHARDED))
    barrier()
    if main:
        _write_files(tmp, models, emas, state, recipe, iteration, optimizers=None)
        publish_directory(tmp, final)
        _point_latest(root, name, keep)
    barrier()
    return final


def _write_files(
    tmp: Path,
    models: dict[str, dict[str, torch.Tensor]],
    emas: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    recipe: dict[str, Any],
    iteration: int,
    *,
    optimizers: dict[str, Any] | None,
) -> None:
    """The checkpoint's files into the folder ``tmp``; without ``optimizers`` (their states are in the
    sharded part) the format is 2."""
    for file, states in (("model.safetensors", models), ("ema.safetensors", emas)):
        flat: dict[str, torch.Tensor] = {}
        for role, sd in states.items():
            flat.update(_flat(role, sd))
        save_file(flat, str(tmp / file))
    if optimizers is not None:
        torch.save(optimizers, tmp / "optim.pt")
    torch.save(state, tmp / "state.pt")
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    meta = {"iteration": iteration, "written_at": time.time(), "format": 1 if optimizers is not None else 2}
    (tmp / META).write_text(json.dumps(meta), encoding="utf-8")


def _point_latest(root: Path, name: str, keep: int) -> None:
    """Make ``name`` the latest checkpoint, then prune to the newest ``keep``."""
    write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.iterdir() if is_complete(p))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def clean_partial(run_dir: Path) -> None:
    """Remove temporary folders left by a checkpoint write that was killed."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if is_temporary(p):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _split(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        role, _, name = key.partition(".")
        out.setdefault(role, {})[name] = value
    return out


class Checkpoint:
    """A complete checkpoint folder, read lazily."""

    def __init__(self, path: Path) -> None:
        if not is_complete(path):
            raise CheckpointError(f"{path}: not a complete checkpoint (meta.json missing)")
        self.path = path

    @property
    def iteration(self) -> int:
        return int(json.loads((self.path / META).read_text(encoding="utf-8"))["iteration"])

    def recipe(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "recipe.yaml").read_text(encoding="utf-8"))

    def models(self) -> dict[str, dict[str, torch.Tensor]]:
        return _split(self._load("model.safetensors"))

    def emas(self) -> dict[str, dict[str, torch.Tensor]]:
        return _split(self._load("ema.safetensors"))

    def optimizers(self) -> dict[str, Any]:
        return self._torch("optim.pt")

    @property
    def sharded(self) -> bool:
        """Written by a sharding parallel strategy (optimiser states only in ``sharded/``)."""
        return (self.path / SHARDED).is_dir()

    def load_sharded(self, template: dict[str, Any]) -> None:
        """Fill ``template`` (nested dicts of this run's sharded tensors) in place; every rank calls it.

        The shards are matched by name and global shape, so the number of ranks may differ from the run
        that wrote them.
        """
        import torch.distributed.checkpoint as dcp

        try:
            dcp.load(template, checkpoint_id=str(self.path / SHARDED))
        except Exception as exc:
            raise CheckpointError(f"{self.path / SHARDED}: cannot read the sharded checkpoint ({exc})") from None

    def state(self) -> dict[str, Any]:
        return self._torch("state.pt")

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / name))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{self.path / name}: cannot read ({exc})") from None

    def _torch(self, name: str) -> Any:
        try:
            return torch.load(self.path / name, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{self.path / name}: cannot read ({exc})") from None


def resolve_checkpoint(target: Path) -> Checkpoint:
    """A run directory (its latest complete checkpoint) or a checkpoint folder itself."""
    if (target / META).is_file():
        return Checkpoint(target)
    if not target.is_dir():
        raise UserError(f"run directory not found: {target}")
    path = latest_checkpoint(target)
    if path is None:
        raise UserError(f"{target}: no complete checkpoint yet (checkpoints/ is empty or missing)")
    return Checkpoint(path)


def trained_weights(ckpt: Checkpoint, role: str, *, ema: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """Network ``role``'s weights in ``ckpt`` (its EMA when ``ema`` and the run kept one) and whether they
    are the EMA's."""
    emas = ckpt.emas() if ema else {}
    if role in emas:
        return emas[role], True
    models = ckpt.models()
    if role not in models:
        raise CheckpointError(f"{ckpt.path}: network {role!r} was not trained in this run, so it has no weights here")
    return models[role], False


def checkpoint_recipe(ckpt: Checkpoint, overrides: Sequence[str] = ()) -> Recipe:
    """The validated recipe a checkpoint was written with, ``KEY=VALUE`` ``overrides`` applied first."""
    source = str(ckpt.path / "recipe.yaml")
    # Files the run was trained on may have moved since (rcm generate needs no training data): not opened.
    return validate_recipe(
        apply_overrides(ckpt.recipe(), overrides, source=source), registry(), source, open_files=False
    )
