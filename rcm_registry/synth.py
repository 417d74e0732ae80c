"""``rcm synth``: the recipe's teacher sampled for every prompt, written as the dataset the recipe trains on.

What is core here is the orchestration; the parts are components. The samples come from a registry
``sampler`` (``--sampler``, default ``trigflow_euler``; ``trigflow_unipc`` is Wan's solver), run through
the same :class:`rcm_registry.protocols.Sampler` protocol as ``rcm sample``, with the recipe's
``teacher_wrapper`` as ``ctx.teacher``; ``--steps``, ``--shift``, ``--guidance`` and ``--sigma-max`` set
that sampler's config fields. The prompts are read, and the samples written, by the recipe's ``data``
component through its config's ``synth_store(root)`` (:class:`rcm_registry.protocols.SynthStore`): the
``latent_shards`` dataset reads ``.txt``/``.jsonl``/``.safetensors`` prompt files and writes latent shards
(its format: :mod:`rcm_plugins.data.latent_shards_format`).

Prompt ``i`` goes to shard ``i // shard_size`` and its noise comes from a generator seeded with
``(seed, i)`` (``SampleContext.sample_generators``), so the output does not depend on the batch size or on
how often the command was interrupted: shards appear whole or not at all, and a restart writes the missing
ones. Every setting (sampler and its config, prompts' digests, teacher) is recorded when a directory is
started and must match when it is continued.

Conditions besides the text (Wan2.1 I2V, Cosmos-Predict2 Video2World; :mod:`rcm_registry.conditions`) come
with the prompts as ``cond.NAME`` rows. ``rcm synth`` checks them against the network's
``condition_shapes`` before anything is written, gives them to the teacher (both CFG branches, as the
dataset does in training) rounded to the store dtype, so the teacher sees the stored values, and stores them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from rcm_registry.component import Component
from rcm_registry.conditions import check_conditions, conditions_on, network_conditions
from rcm_registry.engine.context import SampleContext
from rcm_registry.errors import RecipeError, UnknownComponentError, UserError
from rcm_registry.protocols import Sampler, SynthPrompts, SynthStore, synth_store

#: The sampler ``rcm synth`` uses unless ``--sampler`` names another.
DEFAULT_SAMPLER = "trigflow_euler"


@attrs.frozen
class SynthSettings:
    """How ``rcm synth`` samples the teacher; all of it is recorded with the dataset and must match on restart."""

    #: Latent shape of one sample (C, T, H, W).
    shape: tuple[int, ...] = attrs.field(converter=lambda s: tuple(int(v) for v in s))
    #: A registry sampler (``rcm list sampler``).
    sampler: str = DEFAULT_SAMPLER
    #: Fields of the sampler's config to set (``--steps``, ``--shift``, ``--guidance``, ``--sigma-max``, by field
    #: name); the others keep the sampler's defaults, and an unset ``guidance`` is the teacher wrapper's.
    sampler_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, hash=False)
    negative_prompt: str = ""
    shard_size: int = 64
    batch_size: int = 1
    seed: int = 0
    #: dtype the latents and embeddings are stored in.
    store_dtype: str = "bfloat16"
    #: ``fp32``, or ``bf16`` autocast around the teacher as in training; None: the recipe's ``run.precision``.
    precision: str | None = None

    def check(self) -> None:
        problems = []
        if len(self.shape) != 4 or min(self.shape) < 1:
            problems.append(f"--shape must be four positive sizes C,T,H,W, got {list(self.shape)}")
        for name in ("shard_size", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        if self.store_dtype not in ("bfloat16", "float16", "float32"):
            problems.append(f"store dtype must be bfloat16, float16 or float32, got {self.store_dtype}")
        if self.precision not in (None, "fp32", "bf16"):
            problems.append(f"--precision must be fp32 or bf16, got {self.precision}")
        if problems:
            raise UserError("\n".join(problems))


@attrs.define
class SynthResult:
    samples: int  # in the dataset's index
    shards: int
    written: int  # shards written by this call
    skipped: int  # shards found complete from an earlier call
    remaining: int  # shards still to write (only with max_shards)


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def sampler_config(name: str, options: Mapping[str, Any], wrapper: Any) -> tuple[Component, Any]:
    """The registry's sampler ``name`` and its validated config with ``options`` set; a ``guidance`` left
    unset becomes the teacher wrapper's, so that what is recorded is the scale used. Problems name the option."""
    from rcm_registry.plugin_loading import registry

    reg = registry()
    try:
        comp = reg.get("sampler", name)
    except UnknownComponentError as exc:
        raise UserError(f"--sampler: {exc}") from None
    fields = attrs.fields_dict(comp.config)
    unknown = [k for k in options if k not in fields]
    if unknown:
        has = ", ".join(fields)
        lines = [f"{_option(k)}: sampler {name!r} has no setting {k!r} (it has: {has})" for k in unknown]
        raise UserError("\n".join(lines))
    try:
        config = reg.config("sampler", name, **options)
    except RecipeError as exc:
        where = f"sampler:{name}"
        lines = []
        for problem in exc.problems:  # "sampler:NAME.FIELD: text" -> "--FIELD: text (sampler NAME)"
            rest = problem.removeprefix(where)
            field, _, text = rest[1:].partition(": ")
            if rest.startswith(".") and field in fields:
                lines.append(f"{_option(field)}: {text} (sampler {name})")
            else:
                lines.append(f"--sampler {name}{rest}")
        raise UserError("\n".join(lines)) from None
    if "guidance" in fields and config.guidance is None:
        config = attrs.evolve(config, guidance=float(getattr(wrapper, "guidance", 1.0)))
    return comp, config


def open_synth(
    recipe_path: str, overrides: Sequence[str], out: Path, prompts_path: Path, conditions_path: Path | None = None
) -> tuple[Any, SynthStore, SynthPrompts]:
    """The recipe as ``rcm synth`` needs it, the store its dataset writes into ``out``, and the prompts.

    The dataset being written is the one the recipe trains on, and synth decodes nothing: neither the data
    path nor the codecs other than ``text`` (none for precomputed embeddings) need filling in for it.
    """
    from rcm_registry.plugin_loading import registry
    from rcm_registry.recipe.load import load_recipe
    from rcm_registry.recipe.validate import validate_recipe
    from rcm_registry.schema import MISSING

    data = load_recipe(recipe_path, overrides)
    section = data.get("data")
    if isinstance(section, dict) and section.get("path") == MISSING:
        section["path"] = str(out)
    codecs = data.get("codecs")
    text_codec = codecs.get("text") if isinstance(codecs, dict) else None
    if isinstance(codecs, dict):
        data["codecs"] = {}
    recipe = validate_recipe(data, registry(), source=recipe_path, reads_data=False)
    store = synth_store(recipe.body.data.config, out)
    if store is None:
        raise UserError(
            f"data: rcm synth cannot write a {recipe.body.data.name!r} dataset (its config has no synth_store); "
            "use `data: {use: latent_shards, path: ???}`"
        )
    prompts = store.read_prompts(prompts_path, conditions_path)
    if prompts.text is None and text_codec is not None:
        with_text = {**data, "codecs": {"text": text_codec}}
        recipe = validate_recipe(with_text, registry(), source=recipe_path, reads_data=False)
    return recipe, store, prompts


def _noise_seed(seed: int, index: int) -> int:
    # One independent stream per prompt, fixed by (seed, prompt index) only.
    return (seed * 1_000_003 + index) % (2**63)


def synthesise(
    recipe: Any,
    store: SynthStore,
    prompts: SynthPrompts,
    settings: SynthSettings,
    *,
    role: str = "teacher",
    device: str = "auto",
    max_shards: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> SynthResult:
    """Sample ``recipe``'s teacher for every prompt and write the samples into ``store`` (resumable)."""
    from rcm_registry.engine.graph import pick_device
    from rcm_registry.engine.progress import Progress
    from rcm_registry.engine.trainer import autocast

    settings.check()
    if role not in recipe.networks:
        raise UserError(f"--network: the recipe has no network {role!r} (has: {', '.join(recipe.networks)})")
    wrapper_spec = recipe.body.teacher_wrapper
    if wrapper_spec is None:
        raise UserError("the recipe has no `teacher_wrapper:`; rcm synth reads the teacher through it")
    text_spec = recipe.body.codecs.get("text")
    if prompts.text is None and text_spec is None:
        raise UserError(
            "the recipe has no `codecs.text` to encode the prompts: add one (e.g. "
            "`codecs: {text: {use: umt5, path: ...}}`) or pass precomputed embeddings as --prompts FILE.safetensors"
        )
    net_role = recipe.networks[role]
    check_conditions(role, net_role.spec, network_conditions(net_role.spec, settings.shape), prompts.conditions)
    wrapper = wrapper_spec.build()
    comp, config = sampler_config(settings.sampler, settings.sampler_options, wrapper)
    sampler_fields = attrs.asdict(config)
    _check_negative(prompts, settings, sampler_fields.get("guidance"))
    settings = attrs.evolve(settings, precision=settings.precision or recipe.body.run.precision)
    record, info = _provenance(settings, comp.name, sampler_fields, prompts, net_role.spec.name, wrapper_spec.name)
    store.start(record, info, captions=prompts.captions is not None)

    n, size = len(prompts), settings.shard_size
    n_shards = math.ceil(n / size)
    complete = {k for k in range(n_shards) if store.has_shard(k, k * size, min(size, n - k * size))}
    skipped = len(complete)
    todo = [k for k in range(n_shards) if k not in complete]
    if max_shards is not None:
        todo = todo[:max_shards]
    remaining = n_shards - skipped - len(todo)
    if not todo:
        samples, shards = store.finish()
        return SynthResult(samples, shards, written=0, skipped=skipped, remaining=remaining)

    dev = pick_device(device)
    if recipe.body.run.cpu_threads is not None:
        torch.set_num_threads(recipe.body.run.cpu_threads)
    net = _load_teacher(net_role, role, settings.seed, dev)
    encoder = text_spec.build().to(dev) if (prompts.text is None and text_spec is not None) else None
    store_dtype = getattr(torch, settings.store_dtype)
    negative = _negative(prompts, encoder, settings)
    if negative is not None:
        store.write_negative(negative[0].to(store_dtype), negative[1], settings.negative_prompt)
    sampler = comp.factory(config)
    schedule = recipe.body.schedule.build() if recipe.body.schedule is not None else None
    done = sum(min(size, n - k * size) for k in complete)
    bar = Progress(n, done, every=1) if progress else None
    shown = ", ".join(f"{k} {v}" for k, v in sampler_fields.items())
    echo(
        f"synth: {n} prompts in {n_shards} shards of {size}; {skipped} shard(s) already done; "
        f"{comp.name} ({shown}), {settings.precision} on {dev}"
    )
    written = 0
    for k in todo:
        first, count = k * size, min(size, n - k * size)
        parts: dict[str, list[Tensor]] = {"latents": [], "text": [], "text_mask": []}
        conditions: dict[str, list[Tensor]] = {}
        for b0 in range(first, first + count, settings.batch_size):
            ids = list(range(b0, min(b0 + settings.batch_size, first + count)))
            text, mask = _embed(prompts, ids, encoder, dev)
            extras = _stored_conditions(prompts, ids, store_dtype)
            steps = _StepDisplay(bar, done)
            with autocast(dev, settings.precision or "fp32"):
                latents = _sample(net, sampler, wrapper, schedule, text, negative, ids, settings, dev, extras, steps)
            parts["latents"].append(latents.to(store_dtype).cpu())
            parts["text"].append(text.to(store_dtype).cpu())
            parts["text_mask"].append(mask.to(torch.bool).cpu())
            for key, value in extras.items():
                conditions.setdefault(key, []).append(value)
            done += len(ids)
            if bar is not None:
                bar.update(done, {})
        store.write_shard(
            k,
            first,
            latents=torch.cat(parts["latents"]),
            text=torch.cat(parts["text"]),
            text_mask=torch.cat(parts["text_mask"]),
            conditions={key: torch.cat(values) for key, values in conditions.items()},
            captions=prompts.captions[first : first + count] if prompts.captions is not None else None,
        )
        written += 1
    if bar is not None:
        bar.close()
    samples, shards = store.finish()
    return SynthResult(samples, shards, written=written, skipped=skipped, remaining=remaining)


def _provenance(
    settings: SynthSettings,
    sampler: str,
    sampler_fields: Mapping[str, Any],
    prompts: SynthPrompts,
    teacher: str,
    wrapper: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings record, index info): what a continued run must match, and what the dataset says of itself."""
    record = {k: v for k, v in attrs.asdict(settings).items() if k != "sampler_options"}
    record.update(shape=list(settings.shape), sampler=sampler, teacher=teacher, **prompts.record())
    record.update({f"sampler.{k}": v for k, v in sampler_fields.items()})
    info = {
        "teacher": teacher,
        "teacher_wrapper": wrapper,
        "sampler": sampler,
        **sampler_fields,
        "negative_prompt": settings.negative_prompt,
        "seed": settings.seed,
        "precision": settings.precision,
        "prompts": prompts.source.name,
    }
    if prompts.conditions:
        info["conditions"] = sorted(prompts.conditions)
    return record, info


def _load_teacher(net_role: Any, role: str, seed: int, device: torch.device) -> nn.Module:
    from rcm_registry.engine.graph import build_with_weights

    if net_role.init_from:
        raise UserError(
            f"networks.{role} is initialised from {net_role.init_from!r}; synth needs a network with weights"
        )
    torch.manual_seed(seed)  # networks without weights (tests) are initialised reproducibly
    return build_with_weights(net_role, role).to(device).eval().requires_grad_(False)


class _StepDisplay:
    """``SampleContext.on_step`` for one batch: shows the sampler's step on an interactive progress line
    (a log gets one line per batch, not one per step)."""

    def __init__(self, bar: Any, done: int) -> None:
        self.bar = bar
        self.done = done
        self.steps = 0

    def __call__(self) -> None:
        self.steps += 1
        if self.bar is not None and self.bar.tty:
            self.bar.update(self.done, {"step": self.steps})


def _embed(prompts: SynthPrompts, ids: list[int], encoder: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    if prompts.text is not None:
        assert prompts.text_mask is not None
        return prompts.text[ids].to(device), prompts.text_mask[ids].to(device)
    assert prompts.captions is not None
    with torch.no_grad():
        text, mask = encoder.encode([prompts.captions[i] for i in ids])
    return text, mask


def _stored_conditions(prompts: SynthPrompts, ids: list[int], store: torch.dtype) -> dict[str, Tensor]:
    """The conditions of prompts ``ids`` as the shards store them (floating point in the store dtype)."""
    return {
        key: (value[ids].to(store) if value.is_floating_point() else value[ids]).contiguous()
        for key, value in prompts.conditions.items()
    }


def _check_negative(prompts: SynthPrompts, settings: SynthSettings, guidance: float | None) -> None:
    """Precomputed embeddings carry their own negative prompt: refuse CFG without one, and a --negative-prompt."""
    if prompts.text is None:
        return
    if prompts.negative_text is None and guidance is not None and guidance != 1.0:
        raise UserError(
            f"--prompts {prompts.source}: no negative_text embedding for CFG (guidance {guidance}); "
            "add one to the file or pass --guidance 1"
        )
    if prompts.negative_text is not None and settings.negative_prompt:
        raise UserError("--negative-prompt needs a text codec; the prompts are precomputed embeddings")


def _negative(prompts: SynthPrompts, encoder: Any, settings: SynthSettings) -> tuple[Tensor, Tensor] | None:
    """The negative prompt's embedding and mask (the CFG null condition, also stored), or None."""
    if prompts.text is not None:
        if prompts.negative_text is None:
            return None
        assert prompts.negative_mask is not None
        return prompts.negative_text, prompts.negative_mask
    with torch.no_grad():
        return encoder.encode([settings.negative_prompt])


def _sample(
    net: nn.Module,
    sampler: Sampler,
    wrapper: Any,
    schedule: Any,
    text: Tensor,
    negative: tuple[Tensor, Tensor] | None,
    ids: list[int],
    settings: SynthSettings,
    device: torch.device,
    extras: Mapping[str, Tensor],
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """One batch of prompts ``ids`` through the sampler; prompt i's noise from its own (seed, i) generator."""
    b = len(ids)
    # The conditions besides the text go to both CFG branches, as the latent_shards dataset gives them.
    extra = conditions_on(device, extras)
    null = None
    if negative is not None:
        null = {"text": negative[0].to(device=device, dtype=text.dtype).expand(b, -1, -1), **extra}
    ctx = SampleContext(
        net=net,
        shape=(b, *settings.shape),
        condition={"text": text, **extra},
        generator=torch.Generator(device=device).manual_seed(_noise_seed(settings.seed, ids[0])),
        null_condition=null,
        schedule=schedule,
        teacher=wrapper,
        device=device,
        dtype=torch.float32,
        sample_generators=[torch.Generator(device=device).manual_seed(_noise_seed(settings.seed, i)) for i in ids],
        on_step=on_step,
    )
    with torch.no_grad():
        return sampler(ctx)
