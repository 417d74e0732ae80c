"""Validate a whole recipe before any tensor exists, reporting every problem at once."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs

from rcm_registry.errors import RecipeError
from rcm_registry.recipe.load import merge
from rcm_registry.recipe.schema import NetworkRole, Recipe, RecipeBody, WeightsRef
from rcm_registry.registry import Registry
from rcm_registry.schema import ComponentSpec
from rcm_registry.structure import is_invalid, structure, structure_component
from rcm_registry.suggestions import suggest

#: Keys of a ``networks.ROLE`` entry that belong to the engine, not to the network's config.
_ENGINE_NETWORK_KEYS = ("init_from",)


def validate_recipe(data: Mapping[str, Any], registry: Registry, source: str = "") -> Recipe:
    """Structure ``data`` (from :func:`load_recipe`) into a :class:`Recipe` or raise :class:`RecipeError`.

    A built-in area that failed to load stops validation first (a :class:`UserError` with its error):
    otherwise every recipe naming one of its components would fail as "unknown loss 'scm'".
    """
    registry.check_builtins()
    problems: list[str] = []
    data = copy.deepcopy(dict(data))
    # A copy: taking the engine-level `start:` keys out must not change the recipe saved with checkpoints.
    body_data = copy.deepcopy({k: v for k, v in data.items() if k != "networks"})
    loss_starts = _pop_loss_starts(body_data, problems)
    body = structure(RecipeBody, body_data, "", problems, registry)
    networks = _networks(data.get("networks"), registry, problems)
    if not is_invalid(body):
        for name, phase in body.phases.items():
            phase.loss_starts = loss_starts.get(name, [0] * len(phase.losses))
    if problems:
        raise RecipeError(problems, source=source or None)
    recipe = Recipe(networks=networks, body=body, data=data, source=source)
    _cross_check(recipe, problems)
    if problems:
        raise RecipeError(problems, source=source or None)
    return recipe


def _pop_loss_starts(body: dict[str, Any], problems: list[str]) -> dict[str, list[int]]:
    """Take the engine-level ``start:`` key out of each loss entry (the loss config never sees it)."""
    out: dict[str, list[int]] = {}
    phases = body.get("phases")
    if not isinstance(phases, Mapping):
        return out
    for name, phase in phases.items():
        losses = phase.get("losses") if isinstance(phase, Mapping) else None
        if not isinstance(losses, list):
            continue
        starts = []
        for i, entry in enumerate(losses):
            start = entry.pop("start", 0) if isinstance(entry, dict) else 0
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                problems.append(f"phases.{name}.losses[{i}].start: expected an int >= 0, got {start!r}")
                start = 0
            starts.append(start)
        out[str(name)] = starts
    return out


def _networks(raw: Any, registry: Registry, problems: list[str]) -> dict[str, NetworkRole]:
    if raw is None:
        problems.append("networks: required key missing")
        return {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append("networks: expected a mapping of role names to networks")
        return {}
    resolved: dict[str, dict[str, Any] | None] = {}

    def resolve(role: str, chain: tuple[str, ...]) -> dict[str, Any] | None:
        if role in resolved:
            return resolved[role]
        entry = raw[role]
        if not isinstance(entry, Mapping):
            problems.append(f"networks.{role}: expected a mapping ({{use: NAME, ...}}), got {entry!r}")
            resolved[role] = None
            return None
        parent = entry.get("init_from")
        if parent is None:
            resolved[role] = dict(entry)
            return resolved[role]
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
        entry = resolve(str(role), ())
        if entry is None:
            continue
        path = f"networks.{role}"
        cfg = {k: v for k, v in entry.items() if k not in _ENGINE_NETWORK_KEYS}
        weights = None
        name = cfg.get("use")
        comp = registry.find("network", name) if isinstance(name, str) else None
        if "weights" in cfg and (comp is None or "weights" not in attrs.fields_dict(comp.config)):
            raw_weights = cfg.pop("weights")
            if isinstance(raw_weights, str):
                raw_weights = {"path": raw_weights}
            weights = structure(WeightsRef, raw_weights, f"{path}.weights", problems, registry)
        spec = structure_component("network", cfg, path, problems, registry)
        if is_invalid(spec) or is_invalid(weights):
            continue
        roles[str(role)] = NetworkRole(spec=spec, init_from=entry.get("init_from"), weights=weights)
    return roles


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
    out = recipe.body.output_network
    if out is not None and out not in recipe.networks:
        problems.append(f"output_network: unknown network {out!r}{suggest(out, roles)}")
    for name, phase in recipe.body.phases.items():
        for i, loss in enumerate(phase.losses):
            for problem in _component_check(loss, recipe, name):
                problems.append(f"phases.{name}.losses[{i}] ({loss.name}): {problem}")
    body = recipe.body
    sections: list[tuple[str, ComponentSpec | None]] = [
        ("sample", body.sample),
        ("rollout", body.rollout),
        ("teacher_wrapper", body.teacher_wrapper),
        ("schedule", body.schedule),
        ("parallel", body.parallel),
        ("data", body.data),
        *((f"time.{role}", spec) for role, spec in body.time.items()),
        *((f"metrics[{i}]", spec) for i, spec in enumerate(body.metrics)),
    ]
    for path, spec in sections:
        if spec is not None:
            problems.extend(f"{path} ({spec.name}): {problem}" for problem in _component_check(spec, recipe, path))


def _component_check(spec: ComponentSpec, recipe: Recipe, where: str) -> list[str]:
    """Problems a component's config finds with the rest of the recipe (its optional ``check_recipe``).

    ``where`` is the phase name for losses and the recipe path of the section otherwise.
    """
    check = getattr(spec.config, "check_recipe", None)
    return list(check(recipe, where) or ()) if check is not None else []
