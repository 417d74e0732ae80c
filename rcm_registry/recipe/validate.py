"""Validate a whole recipe before any tensor exists, reporting every problem at once."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from rcm_registry.engine.run_layout import names_a_run
from rcm_registry.errors import RecipeError
from rcm_registry.protocols import inference_only, recipe_problems
from rcm_registry.recipe.graph_check import graph_problems
from rcm_registry.recipe.load import merge
from rcm_registry.recipe.sections import ENGINE_WEIGHTS_FORMATS, NetworkRole, Recipe, RecipeBody, WeightsRef
from rcm_registry.registry import Registry
from rcm_registry.schema import ComponentSpec
from rcm_registry.structure import describe, is_invalid, non_string_key, structure, structure_component
from rcm_registry.suggestions import suggest

#: Keys of a ``networks.ROLE`` entry that belong to the engine, not to the network's config.
_ENGINE_NETWORK_KEYS = ("init_from",)


def validate_recipe(
    data: Mapping[str, Any],
    registry: Registry,
    source: str = "",
    *,
    open_files: bool = True,
    reads_data: bool = True,
) -> Recipe:
    """Structure ``data`` (from :func:`load_recipe`) into a :class:`Recipe` or raise :class:`RecipeError`.

    A built-in area that failed to load stops validation first (a :class:`UserError` with its error):
    otherwise every recipe naming one of its components would fail as "unknown loss 'scm'". Once every
    part is valid, the parts are checked together (:func:`~rcm_registry.recipe.graph_check.graph_problems`:
    networks against data and codecs, the files named); ``open_files=False`` leaves out the checks that read
    a file the recipe names (for recipes whose paths are stand-ins); ``reads_data=False``: nothing reads the
    dataset (``rcm synth`` writes it; a checkpoint sampled with ``--weights`` never opens it).
    """
    registry.check_builtins()
    problems: list[str] = []
    data = copy.deepcopy(dict(data))
    body = structure(RecipeBody, {k: v for k, v in data.items() if k != "networks"}, "", problems, registry)
    networks = _networks(data.get("networks"), registry, problems)
    if problems:
        raise RecipeError(problems, source=source or None)
    recipe = Recipe(networks=networks, body=body, data=data, source=source)
    _cross_check(recipe, problems)
    if not problems:
        problems += graph_problems(recipe, open_files=open_files, reads_data=reads_data)
    if problems:
        raise RecipeError(problems, source=source or None)
    return recipe


def _networks(raw: Any, registry: Registry, problems: list[str]) -> dict[str, NetworkRole]:
    if raw is None:
        problems.append("networks: required key missing")
        return {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append("networks: expected a mapping of role names to networks")
        return {}
    for role in raw:
        if not isinstance(role, str):
            problems.append(non_string_key("networks", role))
    raw = {role: entry for role, entry in raw.items() if isinstance(role, str)}
    resolved: dict[str, dict[str, Any] | None] = {}

    def resolve(role: str, chain: tuple[str, ...]) -> dict[str, Any] | None:
        if role in resolved:
            return resolved[role]
        entry = raw[role]
        if not isinstance(entry, Mapping):
            problems.append(f"networks.{role}: expected a mapping ({{use: NAME, ...}}), got {describe(entry)}")
            resolved[role] = None
            return None
        parent = entry.get("init_from")
        if parent is None:
            resolved[role] = dict(entry)
            return resolved[role]
        if not isinstance(parent, str):
            problems.append(
                f"networks.{role}.init_from: expected the name of another network role, got {describe(parent)}"
            )
            resolved[role] = None
            return None
        if parent not in raw:
            problems.append(f"networks.{role}.init_from: unknown network {parent!r}{suggest(str(parent), list(raw))}")
            resolved[role] = None
            return None
        if parent in chain:
            problems.append(f"networks.{role}.init_from: cycle {' -> '.join([*chain, role, parent])}")
            resolved[role] = None
            return None
        base = resolve(parent, (*chain, role))
        if base is None:
            resolved[role] = None
            return None
        # Same architecture as the parent; weights come from the built parent, not from its file.
        inherited = {k: v for k, v in base.items() if k not in ("weights", "init_from")}
        resolved[role] = merge(inherited, entry)
        return resolved[role]

    roles: dict[str, NetworkRole] = {}
    for role in raw:
        entry = resolve(role, ())
        if entry is None:
            continue
        path = f"networks.{role}"
        cfg = {k: v for k, v in entry.items() if k not in _ENGINE_NETWORK_KEYS}
        weights = None
        if "weights" in cfg and cfg["weights"] is None:  # written out as null: no weights
            del cfg["weights"]
        if "weights" in cfg:
            name = cfg.get("use")
            comp = registry.find("network", name) if isinstance(name, str) else None
            reads_checkpoints = comp is not None and "weights" in attrs.fields_dict(comp.config)
            weights = _weights(cfg.pop("weights"), f"{path}.weights", reads_checkpoints, problems, registry)
            if isinstance(weights, _FamilyWeights):
                cfg["weights"] = weights.section
                weights = None
        spec = structure_component("network", cfg, path, problems, registry)
        if is_invalid(spec) or is_invalid(weights):
            continue
        roles[str(role)] = NetworkRole(spec=spec, init_from=entry.get("init_from"), weights=weights)
    return roles


@attrs.frozen
class _FamilyWeights:
    """Weights a network family reads itself: the ``weights`` section its config gets."""

    section: dict[str, Any]


def _weights(
    raw: Any, path: str, reads_checkpoints: bool, problems: list[str], registry: Registry
) -> WeightsRef | _FamilyWeights | Any:
    """``networks.ROLE.weights``: the engine's to load (a run, own-key safetensors) or the family's."""
    if isinstance(raw, str):
        raw = {"path": raw}
    ref = structure(WeightsRef, raw, path, problems, registry)
    if is_invalid(ref):
        return ref
    run = ref.format == "run" or (ref.format == "auto" and names_a_run(Path(ref.path)))
    if run or ref.format == "safetensors" or (ref.format == "auto" and not reads_checkpoints):
        if ref.format == "run" and not names_a_run(Path(ref.path)):
            problems.append(f"{path}.path: {ref.path} is not a run directory or checkpoint folder")
        return ref
    if not reads_checkpoints:
        problems.append(
            f"{path}.format: {ref.format!r} is a layout that network families read, and this network reads "
            f"none; use one of {', '.join(map(repr, ENGINE_WEIGHTS_FORMATS))}"
        )
        return ref
    # `role` / `ema` also choose among the networks of a checkpoint a family reads (the rCM release's hold
    # several): the family's config checks them, and refuses them for a layout that holds one network.
    chosen = {k: raw[k] for k in ("role", "ema") if isinstance(raw, Mapping) and k in raw}
    return _FamilyWeights({"path": ref.path, "format": ref.format, **chosen})


def _inference_only_attention(role: str, spec: ComponentSpec) -> list[str]:
    """A trained network's attention backends that cannot train (:class:`~rcm_registry.protocols.InferenceOnly`)."""
    if not attrs.has(type(spec.config)):
        return []
    problems = []
    for field in attrs.fields(type(spec.config)):
        value = getattr(spec.config, field.name)
        if isinstance(value, ComponentSpec) and value.kind == "attention":
            why = inference_only(value.config)
            if why is not None:
                problems.append(f"networks.{role}.{field.name}: {value.name} cannot train network {role!r} ({why})")
    return problems


def _cross_check(recipe: Recipe, problems: list[str]) -> None:
    """Checks that span sections: phase targets, the output network, component requirements."""
    roles = list(recipe.networks)
    for name, phase in recipe.body.phases.items():
        target = phase.trains or name
        if target not in recipe.networks:
            hint = suggest(target, roles)
            key = f"phases.{name}.trains" if phase.trains else f"phases.{name}"
            problems.append(
                f"{key}: no network role {target!r} to train{hint} (set phases.{name}.trains to one of: "
                f"{', '.join(roles)})"
            )
    first = min((phase.start for phase in recipe.body.phases.values()), default=0)
    if first > 0:
        problems.append(
            f"phases: no phase starts at iteration 0 (the earliest start is {first}), so iterations 0-{first - 1} "
            "would train nothing: let one phase start at 0"
        )
    out = recipe.body.output_network
    if out is not None and out not in recipe.networks:
        problems.append(f"output_network: unknown network {out!r}{suggest(out, roles)}")
    for role in sorted(recipe.trained_roles() & set(recipe.networks)):
        problems += _inference_only_attention(role, recipe.networks[role].spec)
    for name, phase in recipe.body.phases.items():
        for i, loss in enumerate(phase.losses):
            for problem in recipe_problems(loss.spec.config, recipe, name):
                problems.append(f"phases.{name}.losses[{i}] ({loss.name}): {problem}")
    body = recipe.body
    if body.run.sample_every and body.sample is None:
        problems.append("run.sample_every: the sample pictures need the recipe's `sample:` section (a sampler)")
    loggers = body.loggers or []
    for i, spec in enumerate(loggers):
        if spec.name in [other.name for other in loggers[:i]]:
            problems.append(f"loggers[{i}]: logger {spec.name!r} is listed twice (both would write the same files)")
    sections: list[tuple[str, ComponentSpec | None]] = [
        ("sample", body.sample),
        ("rollout", body.rollout),
        ("teacher_wrapper", body.teacher_wrapper),
        ("schedule", body.schedule),
        ("parallel", body.parallel),
        ("data", body.data),
        *((f"time.{role}", spec) for role, spec in body.time.items()),
        *((f"networks.{role}", net.spec) for role, net in recipe.networks.items()),
        *((f"metrics[{i}]", spec) for i, spec in enumerate(body.metrics)),
        *((f"loggers[{i}]", spec) for i, spec in enumerate(loggers)),
    ]
    for path, spec in sections:
        if spec is not None:
            problems.extend(
                f"{path} ({spec.name}): {problem}" for problem in recipe_problems(spec.config, recipe, path)
            )
