"""The training loop: phase selection, losses, optimiser and EMA steps, logs and checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import yaml

from rcm_registry import distributed
from rcm_registry.atomic import write_text_atomic
from rcm_registry.engine.checkpoint import (
    Checkpoint,
    checkpoint_recipe,
    clean_leftovers,
    full_tensors,
    latest_checkpoint,
    nonfinite_message,
    nonfinite_tensors,
    read_recipe_file,
    save_checkpoint,
    save_sharded_checkpoint,
)
from rcm_registry.engine.context import BatchShard, StepContext
from rcm_registry.engine.graph import Graph, PhaseRuntime, build_graph, pick_device
from rcm_registry.engine.logs import get_logger
from rcm_registry.engine.lr_schedule import apply_lr, lr_factor
from rcm_registry.engine.progress import Progress
from rcm_registry.engine.run_layout import METRICS_FILE
from rcm_registry.engine.tracking import Throughput, Tracker, gpu_memory, learning_rates, sample_picture
from rcm_registry.errors import CheckpointError, NonFiniteCheckpoint, RecipeError, TrainingDiverged, UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.protocols import Parallel, loss_reduction, parallel_layout
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.schema import ComponentSpec
from rcm_registry.state_dicts import load_strict

#: Recipe keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "keep_checkpoints", "log_every", "sample_every", "sample_num"}
#: Top-level recipe sections that may change on resumption (they do not touch what is trained).
RESUMABLE_SECTIONS = {"loggers"}

#: Optimiser steps in a row a phase may skip for non-finite gradients before the run stops with
#: TrainingDiverged. An odd bad batch is skipped and training goes on; ten in a row means the network
#: itself has gone non-finite, and skipping further would only burn compute.
MAX_CONSECUTIVE_SKIPS = 10

__all__ = ["MAX_CONSECUTIVE_SKIPS", "Trainer", "TrainingDiverged", "prepare_run_dir"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """Runs a validated recipe into ``run_dir``.

    One training step and one save path for every ``parallel`` strategy: the recipe's (``single`` when it
    names none) decides how the batch is split and the networks are wrapped.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, *, progress: bool = True) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.log = get_logger("rcm.run")
        run = recipe.body.run
        #: The recipe's ``parallel`` strategy, set up (process group joined when there are several ranks).
        self.parallel: Parallel = recipe.body.parallel.build()
        self.device = self.parallel.setup(pick_device(run.device), run.precision)
        self.parallel.check_batch(run.batch_size)
        self.main = distributed.is_main()
        self.show_progress = progress and self.main
        if run.cpu_threads is not None:
            torch.set_num_threads(run.cpu_threads)
        self._seed(run.seed)
        self.graph: Graph = build_graph(recipe, self.device, self.parallel)
        self.data_generator = torch.Generator().manual_seed(run.seed)
        self.step_generator = torch.Generator(device=self.device).manual_seed(run.seed + 1)
        self.iteration = 0
        #: Optimiser steps skipped for non-finite gradients, by phase: in all, and in a row until now.
        self.skipped: dict[str, int] = dict.fromkeys(self.graph.phases, 0)
        self.skipped_in_row: dict[str, int] = dict.fromkeys(self.graph.phases, 0)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # -- state ---------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "iteration": self.iteration,
            "phase_steps": {name: p.steps for name, p in self.graph.phases.items()},
            "rng_torch": torch.get_rng_state(),
            "rng_data": self.data_generator.get_state(),
            "rng_step": self.step_generator.get_state(),
            "dataset": self.graph.dataset.state_dict(),
            "skipped_steps": dict(self.skipped),
            "skipped_in_row": dict(self.skipped_in_row),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _trained_states(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
        """The trained networks' and their EMAs' state dicts, by role, in the networks' own key names."""
        graph = self.graph
        trained = self.recipe.trained_roles()
        models = {role: graph.module(role).state_dict() for role in graph.nets if role in trained}
        emas = {p.trains: p.ema.state_dict() for p in graph.phases.values() if p.ema is not None}
        return models, emas

    def save(self) -> Path:
        """Write a checkpoint of the current iteration (every rank calls it)."""
        run = self.recipe.body.run
        graph = self.graph
        self._check_finite_before_save()
        if self.parallel.sharded_checkpoints:
            sharded = self._sharded_state({name for name, p in graph.phases.items() if p.steps > 0})
            models = {role: full_tensors(sd, keep=self.main) for role, sd in sharded["model"].items()}
            emas = {role: full_tensors(sd, keep=self.main) for role, sd in sharded["ema"].items()}
            path = save_sharded_checkpoint(
                self.run_dir,
                self.iteration,
                sharded=sharded,
                models=models,
                emas=emas,
                state=self._state(),
                recipe=self.recipe.data,
                keep=run.keep_checkpoints,
                main=self.main,
                barrier=distributed.barrier,
            )
        else:
            # Replicated networks: rank 0's copy is everybody's, written in the one-process format.
            def write() -> Path:
                models, emas = self._trained_states()
                return save_checkpoint(
                    self.run_dir,
                    self.iteration,
                    models=models,
                    emas=emas,
                    optimizers={name: p.optimizer.state_dict() for name, p in graph.phases.items()},
                    state=self._state(),
                    recipe=self.recipe.data,
                    keep=run.keep_checkpoints,
                )

            path = distributed.on_main(write)
        if self.main:
            self.log.info("checkpoint written", path=str(path), iteration=self.iteration)
        return path

    def _check_finite_before_save(self) -> None:
        """Raise :class:`NonFiniteCheckpoint` on every rank when any rank holds a non-finite value in what
        it would write: networks, EMAs, optimiser states (its shards of them under a sharding strategy).
        A collective, so no rank is left waiting in the write while another refuses."""
        models, emas = self._trained_states()
        optimizers = {name: p.optimizer.state_dict() for name, p in self.graph.phases.items()}
        bad = nonfinite_tensors({"model.safetensors": models, "ema.safetensors": emas, "optim.pt": optimizers})
        count = self.parallel.all_reduce_sum(torch.tensor([float(len(bad))], device=self.device))
        if float(count.item()) > 0:
            name = f"iter_{self.iteration:08d}"
            raise NonFiniteCheckpoint(f"at iteration {self.iteration}: " + nonfinite_message(self.run_dir / name, bad))

    def restore(self, ckpt: Checkpoint) -> None:
        check_same_recipe(ckpt, self.recipe)
        state = ckpt.state()
        if ckpt.sharded:
            self._restore_sharded(ckpt, {name for name, n in state["phase_steps"].items() if int(n) > 0})
        else:
            models = ckpt.models()
            for role, sd in models.items():
                load_strict(self.graph.module(role), sd, source=f"{ckpt.path}/model.safetensors [{role}]")
            emas = ckpt.emas()
            optimizers = ckpt.optimizers()
            for name, phase in self.graph.phases.items():
                phase.optimizer.load_state_dict(optimizers[name])
                if phase.ema is not None:
                    phase.ema.load_state_dict(emas[phase.trains])
        for name, phase in self.graph.phases.items():
            phase.steps = int(state["phase_steps"][name])
        torch.set_rng_state(state["rng_torch"])
        self.data_generator.set_state(state["rng_data"])
        self.step_generator.set_state(state["rng_step"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.graph.dataset.load_state_dict(state["dataset"])
        for counts, key in ((self.skipped, "skipped_steps"), (self.skipped_in_row, "skipped_in_row")):
            counts.update({name: int(n) for name, n in state.get(key, {}).items() if name in counts})
        self.iteration = int(state["iteration"])
        if self.main:
            self.log.info("resumed", checkpoint=str(ckpt.path), iteration=self.iteration)

    # -- state across ranks ----------------------------------------------------------------------
    def _sharded_state(self, stepped: set[str]) -> dict[str, Any]:
        """This rank's shards of everything trained: networks, EMAs and the optimiser states of the
        phases in ``stepped``, by name."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        graph = self.graph
        models, emas = self._trained_states()
        return {
            "model": models,
            "ema": emas,
            # Keyed by parameter name, not position, so the states reshard onto another number of ranks.
            # Only phases that have stepped: for an optimiser without state, get_optimizer_state_dict
            # creates one by stepping it with lr 0, which would advance Adam's step count.
            "optim": {
                name: get_optimizer_state_dict(graph.nets[p.trains], p.optimizer)
                for name, p in graph.phases.items()
                if name in stepped
            },
        }

    def _restore_sharded(self, ckpt: Checkpoint, stepped: set[str]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        if not self.parallel.sharded_checkpoints:
            raise CheckpointError(f"{ckpt.path}: a sharded checkpoint needs the recipe's sharding parallel strategy")
        graph = self.graph
        template = self._sharded_state(stepped)
        ckpt.load_sharded(template)
        for role, sd in template["model"].items():
            set_model_state_dict(graph.module(role), sd)
        for name, phase in graph.phases.items():
            if name in stepped:
                set_optimizer_state_dict(graph.nets[phase.trains], phase.optimizer, template["optim"][name])
            if phase.ema is not None:
                phase.ema.load_state_dict(template["ema"][phase.trains])

    # -- loop ----------------------------------------------------------------------------------
    def step(self, phase: PhaseRuntime | None = None) -> dict[str, float]:
        """One optimiser step of ``phase`` (default: the one that runs at this iteration) on this rank's
        slices of the global batch (see ``Parallel`` in protocols).

        Every micro-batch starts from the same step-generator state and draws the randomness of the
        whole batch, keeping its own rows; the generator ends where one process's would.

        A non-finite loss is :class:`TrainingDiverged`. Non-finite gradients (on any rank) skip the
        optimiser and EMA step; the iteration still counts, ``skipped_steps/PHASE`` counts the skips, and
        :data:`MAX_CONSECUTIVE_SKIPS` in a row are :class:`TrainingDiverged`.
        """
        graph = self.graph
        par = self.parallel
        it = self.iteration
        phase = phase or graph.select_phase(it)
        run = self.recipe.body.run
        cfg = phase.config
        full = graph.dataset.next_batch(run.batch_size, self.data_generator)
        active = [entry for entry in phase.losses if entry.active(it)]
        if not active:  # every loss of this phase starts later: nothing to optimise yet
            self.iteration += 1
            return {}
        net = graph.nets[phase.trains]
        micro_steps = par.accumulation
        slices = par.data_size * micro_steps
        start_state = self.step_generator.get_state()
        sums: dict[str, torch.Tensor] = {}

        def add(key: str, value: torch.Tensor | float) -> None:
            v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            sums[key] = sums[key] + v if key in sums else v

        phase.optimizer.zero_grad(set_to_none=True)
        for micro in range(micro_steps):
            self.step_generator.set_state(start_state)
            shard = BatchShard(index=par.data_rank * micro_steps + micro, count=slices, size=run.batch_size)
            ctx = StepContext(
                batch=shard.batch(full).to(self.device),
                nets=graph.nets,
                trained=phase.trains,
                iteration=it,
                generator=self.step_generator,
                phase=phase.name,
                phase_step=phase.steps,
                schedule=graph.schedule,
                teacher=graph.teacher,
                time={role: shard.sampler(sampler) for role, sampler in graph.time.items()},
                rollout=graph.rollout,
                shard=shard,
            )
            total: torch.Tensor | None = None
            with par.gradient_sync(net, micro == micro_steps - 1):
                with autocast(self.device, run.precision):
                    for entry in active:
                        out = entry.loss(ctx)
                        # This slice's part of the global loss: a mean over the batch is the sum of the
                        # slice means divided by the number of slices; a sum is the sum of the slice sums.
                        part = out.loss * (1.0 if loss_reduction(entry.loss) == "sum" else 1.0 / slices)
                        part = part.to(torch.promote_types(part.dtype, torch.float32))
                        add(f"loss/{entry.name}", part)
                        for key, metric in out.metrics.items():
                            add(f"{entry.name}/{key}", float(metric) / micro_steps)
                        total = part if total is None else total + part
                assert total is not None
                # The strategy averages gradients over all ranks; context-parallel ranks each hold a
                # share of the same samples' gradient, so only the data-parallel count is undone here.
                (total * par.data_size).backward()
            add("loss", total)
        keys = sorted(sums)
        # The count of non-finite gradients rides along in the same reduction, so every rank skips alike.
        local = torch.cat([torch.stack([sums[k] for k in keys]).to(self.device), _nonfinite_grads(net, self.device)])
        *reduced, bad_grads = par.all_reduce_sum(local).cpu().tolist()
        values: dict[str, float] = {}
        for key, value in zip(keys, reduced, strict=True):
            # Losses: sum of the parts (each context-parallel rank holds a copy); metrics: mean over ranks.
            is_loss = key == "loss" or key.startswith("loss/")
            values[key] = value / (par.context_size if is_loss else par.world_size)
        for entry in active:
            if not math.isfinite(values[f"loss/{entry.name}"]):
                raise TrainingDiverged(
                    f"loss {entry.name!r} of phase {phase.name!r} is {values[f'loss/{entry.name}']} at iteration "
                    f"{it}; lower phases.{phase.name}.optimizer.lr or set grad_clip"
                )
        if bad_grads > 0:
            self._skip_step(phase, values, int(bad_grads))
            return values
        self.skipped_in_row[phase.name] = 0
        values[f"skipped_steps/{phase.name}"] = float(self.skipped[phase.name])
        factor = lr_factor(
            it, warmup=cfg.lr_warmup, decay=cfg.lr_decay, total=run.iterations, min_ratio=cfg.min_lr_ratio
        )
        apply_lr(phase.optimizer, phase.base_lrs, factor)
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        else:  # the same norm, logged, and the gradients left as they are
            norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
        full_norm = getattr(norm, "full_tensor", None)  # a DTensor when the gradients are sharded
        values[f"{phase.name}/grad_norm"] = float(full_norm() if full_norm is not None else norm)
        try:
            phase.optimizer.step()
        except RuntimeError as exc:
            if "without overflow" not in str(exc):  # torch's words for a step size the parameters cannot hold
                raise
            lr = max(group["lr"] for group in phase.optimizer.param_groups)
            raise TrainingDiverged(
                f"the optimiser step of phase {phase.name!r} overflows the parameters' dtype at iteration {it} "
                f"(learning rate {lr:g}); lower phases.{phase.name}.optimizer.lr"
            ) from None
        if phase.ema is not None:
            phase.ema.update(graph.module(phase.trains), phase.steps)
        phase.steps += 1
        self.iteration += 1
        return values

    def _skip_step(self, phase: PhaseRuntime, values: dict[str, float], bad: int) -> None:
        """Drop this step's gradients (non-finite in ``bad`` parameters, over all ranks): no optimiser or
        EMA update, the iteration still counts. Too many in a row is :class:`TrainingDiverged`."""
        phase.optimizer.zero_grad(set_to_none=True)
        it = self.iteration
        self.skipped[phase.name] += 1
        self.skipped_in_row[phase.name] += 1
        values[f"skipped_steps/{phase.name}"] = float(self.skipped[phase.name])
        in_row = self.skipped_in_row[phase.name]
        if in_row >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingDiverged(
                f"gradients of phase {phase.name!r} were non-finite (NaN or infinity) in {in_row} steps in a row "
                f"up to iteration {it}; lower phases.{phase.name}.optimizer.lr or set grad_clip"
            )
        if self.main:
            self.log.warning(
                "skipped step: non-finite gradients", phase=phase.name, iteration=it, parameters=bad, in_row=in_row
            )
        self.iteration += 1

    def run(self) -> Path | None:
        """Train until ``run.iterations``; returns the final checkpoint folder."""
        run = self.recipe.body.run
        # Rank 0 alone writes metrics, progress and logs; the values it writes are reduced over ranks.
        tracker = Tracker.open(self.recipe, self.run_dir, self.iteration) if self.main else None
        throughput = Throughput(self.recipe, self.graph.dataset, self.iteration)
        progress = Progress(run.iterations, self.iteration, every=run.log_every) if self.show_progress else None
        last: Path | None = None
        if self.main:
            self.log.info(
                "training",
                recipe=self.recipe.source,
                run_dir=str(self.run_dir),
                device=str(self.device),
                start=self.iteration,
                iterations=run.iterations,
                **parallel_layout(self.parallel),
            )
        t0 = time.perf_counter()
        try:
            while self.iteration < run.iterations:
                phase = self.graph.select_phase(self.iteration)
                values = self.step(phase)
                done = self.iteration
                if tracker is not None and (done % run.log_every == 0 or done == run.iterations):
                    rate = (done - (progress.start if progress else 0)) / max(time.perf_counter() - t0, 1e-9)
                    tracked = {**learning_rates(self.graph), **throughput.rates(done), **gpu_memory(self.device)}
                    tracker.log(done, {"phase": phase.name, "it_per_s": rate, **values, **tracked})
                if run.sample_every and done % run.sample_every == 0:
                    picture = sample_picture(self.recipe, self.graph, done)  # every rank: sharded networks
                    if tracker is not None:
                        tracker.log_image(done, "samples", picture)
                if progress is not None:
                    progress.update(done, {k: v for k, v in values.items() if k.startswith("loss")})
                if (run.checkpoint_every and done % run.checkpoint_every == 0) or done == run.iterations:
                    if progress is not None:
                        progress.close()
                    last = self.save()
        finally:
            if progress is not None:
                progress.close()
            if tracker is not None:
                tracker.close()
        return last


_NO_PARALLEL = (
    "torchrun started several processes but the recipe has no `parallel` section: add e.g. "
    "`parallel: {use: fsdp2}` or `parallel: {use: ddp}`"
)


def _nonfinite_grads(net: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """(1,) float64 on the gradients' device: how many of this rank's gradients (its shards, under a
    sharding strategy) hold a NaN or an infinity. One device tensor, so no host sync per parameter."""
    flags = []
    for param in net.parameters():
        grad = param.grad
        if grad is not None:
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            flags.append(torch.isfinite(local).all())
    if not flags:
        return torch.zeros(1, dtype=torch.float64, device=device)
    return (~torch.stack(flags)).sum().to(device=device, dtype=torch.float64).reshape(1)


def recipe_value(recipe: Recipe) -> dict[str, Any]:
    """The validated recipe as plain values, defaults filled in and types converted, without the run keys
    that may change on resume: two recipes with equal values written differently (``1.0e-3`` and
    ``0.001``, a default left out or spelt out) give equal results."""
    value = _plain_value(
        {"networks": recipe.networks, **{f.name: getattr(recipe.body, f.name) for f in attrs.fields(type(recipe.body))}}
    )
    for key in RESUMABLE_CHANGES:
        value["run"].pop(key, None)
    for key in RESUMABLE_SECTIONS:
        value.pop(key, None)
    return value


def _plain_value(obj: Any) -> Any:
    if isinstance(obj, ComponentSpec):
        config = _plain_value(obj.config) if obj.config is not None else {}
        return {"use": obj.name, **(config if isinstance(config, dict) else {"config": config})}
    if attrs.has(type(obj)):
        return {f.name: _plain_value(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, Mapping):
        return {str(k): _plain_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_value(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def recipe_difference(saved: Recipe, current: Recipe) -> str | None:
    """Where ``current`` differs from ``saved`` by value (:func:`recipe_value`), or None when it does not."""
    a, b = recipe_value(saved), recipe_value(current)
    return None if a == b else _first_difference(a, b, "")


def check_same_recipe(ckpt: Checkpoint, current: Recipe) -> None:
    """Refuse to resume ``ckpt`` with a recipe whose values differ from the one it was written with."""
    _refuse_changed_recipe(checkpoint_recipe(ckpt), current, ckpt.path / "recipe.yaml")


def _refuse_changed_recipe(saved: Recipe, current: Recipe, where: Path, *, started: bool = True) -> None:
    diff = recipe_difference(saved, current)
    if diff is None:
        return
    if started:
        rule = (
            f"only run.{', run.'.join(sorted(RESUMABLE_CHANGES))} and {', '.join(sorted(RESUMABLE_SECTIONS))} "
            "may change on --resume"
        )
    else:
        rule = (
            "the run has no checkpoint yet, and starts again in this directory only with the recipe it was "
            "started with; remove the directory or choose another --out"
        )
    raise CheckpointError(f"{where}: the recipe differs from the one this run was started with ({diff}); {rule}")


def _first_difference(a: Any, b: Any, path: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key, object) != b.get(key, object):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or '<top>'}: {a!r} then, {b!r} now"


def prepare_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool, create: bool = True) -> Checkpoint | None:
    """Create ``run_dir`` (after validation), or find the checkpoint to resume from (None: start at 0). With
    ``create=False`` a new run's folder is only checked; :func:`start_run_dir` creates it once the run can
    start.

    The rules, with or without ``resume``:

    * leftovers of killed checkpoint writes and prunes are removed first (:func:`clean_leftovers`);
    * a run with a complete checkpoint continues from it with ``resume`` (its files verified and its
      recipe compared by value, :func:`recipe_value`); without ``resume`` it is an error;
    * a run with no checkpoint yet (killed before its first) starts again from iteration 0 when its
      ``recipe.yaml`` has this recipe's values, saying so, and is an error naming the first difference
      otherwise; ``resume`` of a directory that does not exist starts a new run there, saying so.

    Under torchrun this joins the process group; rank 0 prepares the folder and every rank gets its
    answer (or its error).
    """
    if distributed.launch_env().distributed:
        if "parallel" not in recipe.data:
            raise UserError(_NO_PARALLEL)
        distributed.init_process_group(pick_device(recipe.body.run.device))
        return distributed.on_main(lambda: _prepare_run_dir(run_dir, recipe, resume=resume, create=create))
    return _prepare_run_dir(run_dir, recipe, resume=resume, create=create)


def start_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Create a new run's folder with its ``recipe.yaml`` (rank 0; every rank gets its error)."""
    distributed.on_main(lambda: _create_run_dir(run_dir, recipe))


def _create_run_dir(run_dir: Path, recipe: Recipe) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.data, sort_keys=False))


def _prepare_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool, create: bool = True) -> Checkpoint | None:
    log = get_logger("rcm.run")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: is a file, not a run directory")
    for path in clean_leftovers(run_dir) if run_dir.is_dir() else []:
        log.info("removed a leftover of an interrupted write", path=str(path))
    existing = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if existing is not None:
        if not resume:
            raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
        ckpt = Checkpoint(existing)
        ckpt.verify()
        check_same_recipe(ckpt, recipe)
        _trim_metrics(run_dir / METRICS_FILE, ckpt.iteration)
        return ckpt
    saved = run_dir / "recipe.yaml"
    if saved.is_file():
        _refuse_changed_recipe(_saved_recipe(saved), recipe, saved, started=False)
        log.warning("no checkpoint yet: starting the run again from iteration 0", run_dir=str(run_dir))
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    elif (run_dir / METRICS_FILE).exists():
        raise UserError(
            f"{run_dir / 'metrics.jsonl'}: a run's metrics without its recipe.yaml; choose another --out or remove it"
        )
    elif resume:
        log.warning("--resume: no run here yet, starting a new one", run_dir=str(run_dir))
    if create:  # already on rank 0 alone (prepare_run_dir): not through on_main again
        _create_run_dir(run_dir, recipe)
    return None


def _saved_recipe(path: Path) -> Recipe:
    """The validated ``recipe.yaml`` a run directory was started with."""
    data = read_recipe_file(path)
    try:
        return validate_recipe(data, registry(), str(path))
    except RecipeError as exc:
        raise UserError(
            f"{path}: the recipe this run was started with no longer validates ({exc.problems[0]})"
        ) from None


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines past the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= iteration:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    path.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
