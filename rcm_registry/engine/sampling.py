"""Open a run's checkpoint (its output network with EMA weights, the recipe's objects) and draw samples from it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from rcm_registry.engine.checkpoint import Checkpoint, checkpoint_recipe, resolve_checkpoint, trained_weights
from rcm_registry.engine.context import SampleContext
from rcm_registry.engine.graph import build_network, build_with_weights, pick_device
from rcm_registry.engine.inference import (
    InferenceOptions,
    apply_after_loading,
    check_device,
    inference_options,
    with_attention,
)
from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.protocols import Condition
from rcm_registry.recipe.load import apply_overrides
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.schema import MISSING
from rcm_registry.state_dicts import load_strict


@attrs.define
class LoadedRun:
    """A checkpoint's recipe, one of its networks with trained (EMA) weights, and the objects to read it.

    What ``rcm sample``, ``rcm export`` and ``rcm generate`` work from (:func:`open_checkpoint`).
    """

    recipe: Recipe
    #: The run checkpoint the recipe (and, without ``weights_from``, the weights) came from; None when the
    #: recipe is a file and the weights a checkpoint named by ``--weights``.
    checkpoint: Checkpoint | None
    role: str
    net: nn.Module
    used_ema: bool
    device: torch.device
    schedule: Any
    teacher: Any
    #: The recipe's codecs that were asked for, built on ``device``.
    codecs: dict[str, Any] = attrs.field(factory=dict)
    #: The inference options the network was loaded with (its attention backend, FP8 linears).
    inference: InferenceOptions = attrs.field(factory=InferenceOptions)
    _dataset: Any = attrs.field(default=None, alias="dataset")
    #: The checkpoint the network's weights were read from instead of the run's (``--weights``).
    weights_from: str | None = None
    #: Whether the recipe names its training data (a recipe file may leave ``data.path`` as ``???``).
    has_data: bool = True

    @property
    def dataset(self) -> Any:
        """The recipe's dataset, opened on first use (generation needs it only for the default latent shape)."""
        if not self.has_data:
            raise UserError(
                f"{self.recipe.source}: data.path is not given (???), and the training data is needed here: "
                "pass --set data.path=DIR (or, for rcm generate, --shape or --frames/--height/--width)"
            )
        if self._dataset is None:
            self._dataset = self.recipe.body.data.build()
        return self._dataset

    @property
    def source(self) -> str:
        """Where the network's weights came from: the ``--weights`` checkpoint, else the run checkpoint."""
        return self.weights_from or str(self.checkpoint.path if self.checkpoint else self.recipe.source)

    def weights_label(self) -> str:
        """How messages name the weights: ``EMA weights``, ``raw weights`` or ``weights from FILE``."""
        if self.weights_from is not None:
            return f"weights from {self.weights_from}"
        return "EMA weights" if self.used_ema else "raw weights"


#: Recipe files a command may be given instead of a run (with ``--weights``).
RECIPE_SUFFIXES = (".yaml", ".yml")


def open_checkpoint(
    target: Path,
    *,
    overrides: Sequence[str] = (),
    role: str | None = None,
    ema: bool = True,
    device: str = "auto",
    codecs: Sequence[str] = (),
    weights: str | None = None,
    attention: str | None = None,
    fp8_linear: bool | None = None,
    cuda_graphs: bool | None = None,
    inference: bool = True,
) -> LoadedRun:
    """Load network ``role`` (default: the recipe's output network) of a run directory's latest checkpoint,
    or of a checkpoint folder, with its EMA weights unless ``ema`` is False, on ``device``, and build the
    recipe's codecs named in ``codecs``.

    ``overrides`` are ``KEY=VALUE`` changes to the checkpoint's recipe (e.g. ``codecs.vae.path=/models/vae``)
    for paths that differ on this machine. ``attention`` (a backend name), ``fp8_linear`` and ``cuda_graphs``
    override the recipe's ``inference:`` section (:mod:`rcm_registry.engine.inference`); ``inference=False``
    loads the network as it trained, without any of them (``rcm export``: weights, not sampling).

    ``weights``: take the network's weights from this checkpoint instead, as ``networks.ROLE.weights: {path:
    weights}`` would (any format the network reads, e.g. the rCM release's ``.pt``; ``ema`` False is
    ``ema: false``); ``target`` may then be a recipe file instead of a run (see :func:`recipe_with_weights`).
    """
    ckpt = None if weights is not None and _is_recipe_file(target) else resolve_checkpoint(target)
    has_data = True
    if weights is None:
        assert ckpt is not None
        recipe = checkpoint_recipe(ckpt, overrides)
    else:
        recipe, role, has_data = recipe_with_weights(target if ckpt is None else ckpt, overrides, role, weights, ema)
    role = role or recipe.output_role
    if role not in recipe.networks:
        raise UserError(f"--network: this run has no network {role!r} (has: {', '.join(recipe.networks)})")
    dev = pick_device(device)
    if recipe.body.run.cpu_threads is not None:
        torch.set_num_threads(recipe.body.run.cpu_threads)
    options = inference_options(recipe, attention, fp8_linear, cuda_graphs) if inference else InferenceOptions()
    check_device(options, dev)
    entry = recipe.networks[role]
    if options.attention is not None:
        entry = attrs.evolve(entry, spec=with_attention(entry.spec, options.attention, role))
    if weights is None:
        assert ckpt is not None
        state, used_ema = trained_weights(ckpt, role, ema=ema)
        net = build_network(entry)
        load_strict(net, state, source=f"{ckpt.path} [{role}{' EMA' if used_ema else ''}]")
    else:
        net, used_ema = build_with_weights(entry, role), ema
    net.to(dev).eval().requires_grad_(False)
    net = apply_after_loading(net, options)
    body = recipe.body
    return LoadedRun(
        recipe=recipe,
        checkpoint=ckpt,
        role=role,
        net=net,
        used_ema=used_ema,
        device=dev,
        schedule=body.schedule.build() if body.schedule else None,
        teacher=body.teacher_wrapper.build() if body.teacher_wrapper else None,
        codecs={name: body.codecs[name].build().to(dev) for name in codecs if name in body.codecs},
        weights_from=weights,
        has_data=has_data,
        inference=options,
    )


def _is_recipe_file(target: Path) -> bool:
    return target.suffix in RECIPE_SUFFIXES and target.is_file()


def recipe_with_weights(
    source: Path | Checkpoint, overrides: Sequence[str], role: str | None, weights: str, ema: bool
) -> tuple[Recipe, str, bool]:
    """The recipe of a run checkpoint or a recipe file, with network ``role`` (default: the output network)
    reading ``weights``; returns it, the role, and whether it names its training data.

    Only that network is built, so the other networks' ``weights`` are dropped (a recipe file's teacher
    may still say ``???``); a recipe file's ``data.path`` may be ``???`` too, when nothing reads the data.
    The weights are checked as the recipe is (an unsafe pickle is refused before anything is written).
    """
    from rcm_registry.recipe.load import load_recipe

    if isinstance(source, Checkpoint):
        where = str(source.path / "recipe.yaml")
        data = apply_overrides(source.recipe(), overrides, source=where)
    else:
        where = str(source)
        data = load_recipe(source, overrides)
    networks = data.get("networks")
    if not isinstance(networks, dict):
        return validate_recipe(data, registry(), where), role or "", True  # names what is wrong
    for entry in networks.values():
        if isinstance(entry, dict):
            entry.pop("weights", None)
    section = data.get("data")
    has_data = not (isinstance(section, dict) and section.get("path") == MISSING)
    if not has_data:
        section["path"] = _NO_DATA
    role = role or validate_recipe(data, registry(), where, reads_data=has_data).output_role
    if role not in networks:
        raise UserError(f"--network: {where} has no network {role!r} (has: {', '.join(networks)})")
    networks[role]["weights"] = {"path": weights, **({} if ema else {"ema": False})}
    return validate_recipe(data, registry(), where, reads_data=has_data), role, has_data


#: What a recipe file's ``data.path: ???`` becomes while a checkpoint named by ``--weights`` is sampled
#: (:attr:`LoadedRun.has_data` is then False and the dataset is never opened).
_NO_DATA = "<data.path not given>"


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
        raise UserError(f"{run.recipe.source} has no `sample:` section; pass --sampler NAME")
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
    samples, condition, seconds = sample_network(
        sample_fn, run.net, run.dataset, num, seed=seed, schedule=run.schedule, teacher=run.teacher, device=run.device
    )
    metrics: dict[str, float] = {}
    for spec in run.recipe.body.metrics:
        metrics.update(spec.build()(samples, condition, run.dataset))
    return SampleResult(samples=samples, condition=condition, seconds=seconds, metrics=metrics)


def sample_network(
    sample_fn: Any,
    net: nn.Module,
    dataset: Any,
    num: int,
    *,
    seed: int,
    schedule: Any,
    teacher: Any,
    device: torch.device,
) -> tuple[torch.Tensor, Condition, float]:
    """``num`` samples of ``net`` through the sampler ``sample_fn`` with the dataset's conditions for them, on the
    CPU, and the wall time of the sampler call. Conditions come from a generator seeded with ``seed``, noise from
    one seeded with ``seed + 1``: the same seed gives the same samples (``rcm sample`` and training pictures)."""
    cond_gen = torch.Generator().manual_seed(seed)
    condition, null_condition = dataset.conditions(num, cond_gen)
    condition = {k: v.to(device) for k, v in condition.items()}
    if null_condition is not None:
        null_condition = {k: v.to(device) for k, v in null_condition.items()}
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    ctx = SampleContext(
        net=net,
        shape=(num, *dataset.sample_shape),
        condition=condition,
        generator=gen,
        null_condition=null_condition,
        schedule=schedule,
        teacher=teacher,
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = sample_fn(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return samples.detach().float().cpu(), {k: v.cpu() for k, v in condition.items()}, seconds
