"""Draw samples from a finished (or running) run: its output network, EMA weights, recipe sampler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.engine.context import SampleContext
from rcm_registry.engine.graph import build_network, load_strict, pick_device
from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.protocols import Condition
from rcm_registry.recipe.schema import Recipe
from rcm_registry.recipe.validate import validate_recipe


@attrs.define
class LoadedRun:
    """A run's recipe, its output network with trained (EMA) weights, and the objects to read it."""

    recipe: Recipe
    checkpoint: Checkpoint
    role: str
    net: nn.Module
    used_ema: bool
    device: torch.device
    dataset: Any
    schedule: Any
    teacher: Any


def open_run(run_dir: Path, *, role: str | None = None, ema: bool = True, device: str = "auto") -> LoadedRun:
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no complete checkpoint yet (checkpoints/ is empty or missing)")
    ckpt = Checkpoint(path)
    recipe = validate_recipe(ckpt.recipe(), registry(), str(path / "recipe.yaml"))
    role = role or recipe.output_role
    if role not in recipe.networks:
        raise UserError(f"--network: this run has no network {role!r} (has: {', '.join(recipe.networks)})")
    dev = pick_device(device)
    if recipe.body.run.cpu_threads is not None:
        torch.set_num_threads(recipe.body.run.cpu_threads)
    net = build_network(recipe.networks[role])
    emas = ckpt.emas() if ema else {}
    used_ema = role in emas
    states = emas if used_ema else ckpt.models()
    if role not in states:
        raise UserError(f"{path}: network {role!r} was not trained in this run, so the checkpoint has no weights")
    load_strict(net, states[role], f"{path} [{role}{' EMA' if used_ema else ''}]")
    net.to(dev).eval().requires_grad_(False)
    body = recipe.body
    return LoadedRun(
        recipe=recipe,
        checkpoint=ckpt,
        role=role,
        net=net,
        used_ema=used_ema,
        device=dev,
        dataset=body.data.build(),
        schedule=body.schedule.build() if body.schedule else None,
        teacher=body.teacher_wrapper.build() if body.teacher_wrapper else None,
    )


def sampler_with_steps(run: LoadedRun, steps: int | None, sampler: str | None = None, **overrides: Any) -> Any:
    """The recipe's sampler (or ``sampler``), with ``steps`` and other config fields overridden."""
    spec = run.recipe.body.sample
    reg = registry()
    if sampler is not None:
        config = reg.config("sampler", sampler)
        comp = reg.get("sampler", sampler)
    elif spec is not None:
        config, comp = spec.config, spec.component
    else:
        raise UserError(f"{run.checkpoint.path}/recipe.yaml has no `sample:` section; pass --sampler NAME")
    changes = {k: v for k, v in {"steps": steps, **overrides}.items() if v is not None}
    fields = attrs.fields_dict(type(config))
    unknown = [k for k in changes if k not in fields]
    if unknown:
        raise UserError(f"sampler {comp.name!r} has no setting {', '.join(unknown)}")
    try:
        config = attrs.evolve(config, **changes)
        for name, value in changes.items():
            field = fields[name]
            if field.validator is not None:
                field.validator(config, field, value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"sampler {comp.name!r}: {exc}") from None
    return comp.factory(config)


@attrs.define
class SampleResult:
    samples: torch.Tensor
    condition: Condition
    seconds: float
    metrics: dict[str, float]


def draw(
    run: LoadedRun,
    num: int,
    *,
    steps: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
    **overrides: Any,
) -> SampleResult:
    """``num`` samples with their conditions, the wall time of the sampler call, and the recipe's metrics."""
    if num <= 0:
        raise UserError(f"--num must be positive, got {num}")
    sample_fn = sampler_with_steps(run, steps, sampler, **overrides)
    cond_gen = torch.Generator().manual_seed(seed)
    condition, null_condition = run.dataset.conditions(num, cond_gen)
    condition = {k: v.to(run.device) for k, v in condition.items()}
    if null_condition is not None:
        null_condition = {k: v.to(run.device) for k, v in null_condition.items()}
    gen = torch.Generator(device=run.device).manual_seed(seed + 1)
    ctx = SampleContext(
        net=run.net,
        shape=(num, *run.dataset.sample_shape),
        condition=condition,
        generator=gen,
        null_condition=null_condition,
        schedule=run.schedule,
        teacher=run.teacher,
        device=run.device,
    )
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = sample_fn(ctx)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t0
    samples = samples.detach().float().cpu()
    condition = {k: v.cpu() for k, v in condition.items()}
    metrics: dict[str, float] = {}
    for spec in run.recipe.body.metrics:
        metrics.update(spec.build()(samples, condition, run.dataset))
    return SampleResult(samples=samples, condition=condition, seconds=seconds, metrics=metrics)
