"""Checkpoints: written to a temporary folder, fsynced, then renamed, so a kill never leaves a
half-written one where a resume would look.

Layout of ``RUN/checkpoints/iter_00000100/``::

    model.safetensors   trained networks, keys "ROLE.param"
    ema.safetensors     EMA shadows of trained networks that have one, keys "ROLE.param"
    optim.pt            optimiser states by phase (torch.save; read with weights_only=True)
    state.pt            iteration, phase step counts, RNG states, dataset position
    recipe.yaml         the resolved recipe the run was started with
    meta.json           iteration, format, and the sha256 of every other file above (key ``sha256``)

``RUN/checkpoints/latest`` names the newest complete checkpoint.

Reading a file of a checkpoint (:class:`Checkpoint`: resume, ``rcm sample``/``generate``/``export``, a
network initialised from a run) first checks it against the sha256 in ``meta.json``, so flipped bytes inside
tensor data are a :class:`~rcm_registry.errors.CheckpointError` naming the file, as are a missing or cut
file and a ``meta.json`` that is not JSON. Checkpoints written before checksums were recorded have no
``sha256`` key: they still load, with a warning that they are not verified.

Nothing non-finite is written: :func:`save_checkpoint` refuses tensors holding NaN or infinity
(:class:`~rcm_registry.errors.NonFiniteCheckpoint`). Pruning renames an old checkpoint to a temporary
name before deleting it, so a kill midway never leaves a half-deleted folder that looks complete;
:func:`clean_leftovers` removes what a kill left (temporary names, ``iter_*`` folders without ``meta.json``).

With a parallel strategy that shards parameters (``fsdp2``) every rank also writes its shards of the
trained networks, their EMAs and the optimiser states into ``sharded/`` through
``torch.distributed.checkpoint`` (resumable on another number of ranks), and ``optim.pt`` is left out;
``model.safetensors`` and ``ema.safetensors`` are then the consolidated full tensors gathered on rank 0,
so ``rcm sample`` and ``rcm export`` read every checkpoint the same way. ``sharded/`` has no sha256 in
``meta.json`` (torch.distributed.checkpoint keeps its own metadata); its callers check finiteness across
ranks before writing (see ``Trainer.save``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from rcm_registry.atomic import (
    TMP_MARK,
    atomic_directory,
    fsync_dir,
    is_temporary,
    publish_directory,
    temporary_name,
    write_text_atomic,
)
from rcm_registry.checksum import file_sha256
from rcm_registry.engine.logs import get_logger
from rcm_registry.engine.run_layout import (
    LATEST,
    META,
    PREFIX,
    checkpoint_name,
    checkpoint_root,
    is_complete,
    latest_checkpoint,
)
from rcm_registry.errors import CheckpointError, NonFiniteCheckpoint, UserError
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
    """Write checkpoint ``iteration`` atomically and prune to the newest ``keep``; returns its folder.

    A non-finite value in ``models``, ``emas`` or ``optimizers`` is a :class:`NonFiniteCheckpoint` and
    nothing is written.
    """
    root = checkpoint_root(run_dir)
    name = checkpoint_name(iteration)
    final = root / name
    check_finite({"model.safetensors": models, "ema.safetensors": emas, "optim.pt": optimizers}, final)
    # overwrite: re-writing the same iteration (e.g. a resumed run ending where it stopped)
    with atomic_directory(final, overwrite=True) as tmp:
        _write_files(tmp, models, emas, state, recipe, iteration, optimizers=optimizers)
    _point_latest(root, name, keep)
    return final


SHARDED = "sharded"


def nonfinite_tensors(tree: Any, name: str = "") -> list[str]:
    """Names (``a.b[0].c``) of the floating-point tensors in ``tree`` (nested mappings, lists and tensors)
    that hold a NaN or an infinity. Of a sharded tensor (DTensor) only this rank's part is looked at."""
    if isinstance(tree, torch.Tensor):
        local = tree.to_local() if hasattr(tree, "to_local") else tree
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            return [name]
        return []
    if isinstance(tree, Mapping):
        return [
            bad
            for key, value in tree.items()
            for bad in nonfinite_tensors(value, f"{name}.{key}" if name else str(key))
        ]
    if isinstance(tree, (list, tuple)):
        return [bad for i, value in enumerate(tree) for bad in nonfinite_tensors(value, f"{name}[{i}]")]
    return []


def nonfinite_message(target: Path, bad: Sequence[str]) -> str:
    """The one line refusing to write checkpoint ``target`` because of the tensors ``bad`` (may be empty
    where only another rank saw them)."""
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    where = shown or "tensors held by another rank"
    return (
        f"refusing to write checkpoint {target}: non-finite values (NaN or infinity) in {where}; "
        "the previous checkpoint is kept (lower the learning rate, or clip gradients with grad_clip)"
    )


def check_finite(parts: Mapping[str, Any], target: Path) -> None:
    """Raise :class:`NonFiniteCheckpoint` when a tensor in ``parts`` (file name → nested state) is not finite."""
    bad = nonfinite_tensors(dict(parts))
    if bad:
        raise NonFiniteCheckpoint(nonfinite_message(target, bad))


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
    name = checkpoint_name(iteration)
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
    sums = {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    meta = {
        "iteration": iteration,
        "written_at": time.time(),
        "format": 1 if optimizers is not None else 2,
        "sha256": sums,
    }
    (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _point_latest(root: Path, name: str, keep: int) -> None:
    """Make ``name`` the latest checkpoint, then prune to the newest ``keep``."""
    write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints.

    Each goes to a temporary name first (one rename: it stops being a checkpoint at once), and is deleted
    from there; a kill during the deletion leaves only a temporary folder, which :func:`clean_leftovers`
    removes, never a folder that still has ``meta.json`` but lost its tensors.
    """
    done = sorted(p for p in root.iterdir() if is_complete(p))
    for old in done[:-keep]:
        trash = temporary_name(old.with_name(f"{old.name}.trash"))
        old.rename(trash)
        fsync_dir(root)
        shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed writes and prunes left in ``run_dir/checkpoints`` and return it: temporary names
    (:func:`~rcm_registry.atomic.is_temporary`) and ``iter_*`` folders without ``meta.json`` (a checkpoint
    is only ever renamed into place complete, so such a folder is one an older version was deleting)."""
    root = checkpoint_root(run_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        half_deleted = p.is_dir() and p.name.startswith(PREFIX) and not (p / META).exists()
        if is_temporary(p) or half_deleted:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _split(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        role, _, name = key.partition(".")
        out.setdefault(role, {})[name] = value
    return out


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML and torch.load errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The recipe mapping a run saved in ``path`` (its ``recipe.yaml``, or a checkpoint's), unvalidated."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: not readable YAML ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping (the recipe), got {type(data).__name__}")
    return data


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({_one_line(exc)}); the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object; the checkpoint is damaged")
    sums = meta.get("sha256")
    if sums is not None and not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
        raise CheckpointError(f"{path} [sha256]: expected an object of file name -> hex digest")
    return meta


class Checkpoint:
    """A complete checkpoint folder, read lazily; every file is checked against its sha256 in ``meta.json``
    the first time it is read."""

    def __init__(self, path: Path) -> None:
        if not is_complete(path):
            raise CheckpointError(f"{path}: not a complete checkpoint (meta.json missing)")
        self.path = path
        self.meta = _read_meta(path / META)
        self._verified: set[str] = set()

    @property
    def iteration(self) -> int:
        iteration = self.meta.get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            raise CheckpointError(f"{self.path / META}: no integer 'iteration'; the checkpoint is damaged")
        return iteration

    @property
    def checksums(self) -> dict[str, str] | None:
        """sha256 by file name, or None for a checkpoint written before they were recorded."""
        return self.meta.get("sha256")

    def verify(self) -> None:
        """Check every file ``meta.json`` lists (resume does, before building anything)."""
        for name in self.checksums or {}:
            self._file(name)

    def _file(self, name: str) -> Path:
        """``path/name``, present and (once per file) equal to its recorded sha256."""
        path = self.path / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint is damaged")
        if name in self._verified:
            return path
        sums = self.checksums
        if sums is None:
            if not self._verified:  # once per checkpoint
                get_logger("rcm.checkpoint").warning(
                    "checkpoint written without checksums (an older version): its files are not verified",
                    path=str(self.path),
                )
        elif name not in sums:
            raise CheckpointError(f"{path}: meta.json records no sha256 for it; the checkpoint is damaged")
        else:
            digest = file_sha256(path)
            if digest != sums[name]:
                raise CheckpointError(
                    f"{path}: sha256 {digest[:12]}… differs from the one in meta.json ({sums[name][:12]}…); "
                    "the file changed or was damaged after it was written"
                )
        self._verified.add(name)
        return path

    def recipe(self) -> dict[str, Any]:
        return read_recipe_file(self._file("recipe.yaml"))

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
        path = self._file(name)
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: cannot read ({_one_line(exc)})") from None

    def _torch(self, name: str) -> Any:
        path = self._file(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read ({_one_line(exc)})") from None


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
