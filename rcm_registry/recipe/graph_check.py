"""Checks of what the recipe's parts decide together: every network against the shapes its data and codecs
give, and the files the recipe names. Run by :func:`rcm_registry.recipe.validate.validate_recipe` once each
part is valid on its own; nothing is built and no tensor is read.

The knowledge is in the plugins (a dataset or codec config's ``sample_shapes()``, a network config's
``network_inputs()``, an attention config's ``head_dim_problem()``; see :mod:`rcm_registry.protocols`); this
module only compares what they declare.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rcm_registry.engine.run_layout import names_a_run
from rcm_registry.errors import UserError
from rcm_registry.protocols import (
    InputSpec,
    NetworkInputs,
    SampleShapes,
    data_check,
    head_dim_problem,
    network_inputs,
    sample_shapes,
)
from rcm_registry.recipe.sections import Recipe, WeightsRef
from rcm_registry.schema import ComponentSpec
from rcm_registry.suggestions import suggest


def graph_problems(recipe: Recipe, *, open_files: bool = True, reads_data: bool = True) -> list[str]:
    """Every problem between the networks, the data, the codecs and the files the recipe names.

    ``open_files=False`` leaves out whatever needs a file the recipe names (weights, a dataset directory, a
    codec folder): for recipes whose paths are stand-ins. ``reads_data=False``: nothing reads the dataset (``rcm
    synth`` writes it; a checkpoint sampled with ``--weights`` never opens it), so it is not checked.
    """
    problems: list[str] = []
    if open_files:
        for role, entry in recipe.networks.items():
            if entry.weights is not None:
                problems += _engine_weights_problems(entry.weights, f"networks.{role}.weights")
    sources: list[tuple[str, SampleShapes]] = []
    body = recipe.body
    if open_files and reads_data and body.data is not None:  # the dataset's own check of its files
        problems += [f"data ({body.data.name}): {line}" for line in data_check(body.data.config).problems]
    declarers = [] if not reads_data else [("data", body.data)]
    declarers += [(f"codecs.{name}", spec) for name, spec in body.codecs.items()]
    for path, spec in declarers:
        shapes = _declared(lambda spec=spec: sample_shapes(spec.config), f"{path} ({spec.name})", open_files, problems)
        if shapes is not None:
            sources.append((_source_label(path, spec, shapes), shapes))
    for role, entry in recipe.networks.items():
        label = f"networks.{role} ({entry.spec.name})"
        inputs = _declared(lambda entry=entry: network_inputs(entry.spec.config), label, open_files, problems)
        if inputs is None:
            continue
        problems += _network_problems(f"networks.{role}", label, inputs)
        for i, (source, shapes) in enumerate(sources):
            problems += _compare(label, inputs, source, shapes, complete=i == 0 and reads_data)
    return problems


def _declared(ask, label: str, open_files: bool, problems: list[str]):  # type: ignore[no-untyped-def]
    """``ask()``; a ValueError or UserError it raises is a problem of ``label`` (None then). Without
    ``open_files`` a UserError (a file that is not there) is passed over."""
    try:
        return ask()
    except UserError as exc:
        if open_files:
            problems.append(f"{label}: {exc}")
    except ValueError as exc:
        problems.append(f"{label}: {exc}")
    return None


def _source_label(path: str, spec: ComponentSpec, shapes: SampleShapes) -> str:
    return f"{path} ({spec.name}{', ' + shapes.source if shapes.source else ''})"


def _network_problems(path: str, label: str, inputs: NetworkInputs) -> list[str]:
    problems = []
    if inputs.heads is not None and inputs.width is not None and inputs.width % inputs.heads:
        problems.append(f"{label}: width {inputs.width} does not split into {inputs.heads} attention heads")
    attention = inputs.attention
    if inputs.head_dim is not None and isinstance(attention, ComponentSpec):
        problem = head_dim_problem(attention.config, inputs.head_dim)
        if problem:
            problems.append(f"{path}.attention ({attention.name}): {problem}")
    return problems


def _compare(label: str, inputs: NetworkInputs, source: str, shapes: SampleShapes, *, complete: bool) -> list[str]:
    """What ``source`` gives that the network does not take, or (``complete``: the data, which gives every
    condition the network sees) needs that ``source`` does not give. A codec is compared on what it gives."""
    problems = []
    if shapes.x0 is not None:
        problems += _shape_problems(label, "samples", inputs.x, source, shapes.x0, None)
    keys = sorted(set(shapes.condition) | set(inputs.condition)) if complete else list(shapes.condition)
    for key in keys:
        want = inputs.condition.get(key)
        got = shapes.condition.get(key)
        if want is None:
            if inputs.closed and got is not None:
                known = ", ".join(inputs.condition) or "none"
                problems.append(
                    f"{label}: {source} gives condition {key!r}, which the network does not take "
                    f"(it takes: {known}{suggest(key, list(inputs.condition))})"
                )
            continue
        if got is None:
            if want.required:
                problems.append(
                    f"{label}: the network needs condition {key!r} ({_axes(want)}), which {source} does not give"
                )
            continue
        problems += _shape_problems(label, f"condition {key!r}", want, source, got, shapes.classes.get(key))
    return problems


def _shape_problems(
    label: str, what: str, want: InputSpec, source: str, got: tuple[int | None, ...], classes: int | None
) -> list[str]:
    shape = list(got)
    if len(got) != len(want.shape):
        return [f"{label}: {source} gives {what} of shape {shape}, the network takes ({_axes(want)})"]
    problems = []
    for i, (size, need) in enumerate(zip(got, want.shape, strict=True)):
        name = want.names[i]
        if size is None:
            continue
        if need is not None and size != need:
            problems.append(f"{label}: takes {name} = {need} in {what}, {source} gives {size} (shape {shape})")
        elif want.multiple_of is not None and size % want.multiple_of[i]:
            problems.append(
                f"{label}: {source} gives {what} with {name} = {size} (shape {shape}), not a multiple of "
                f"{want.multiple_of[i]} (the network's patch size along {name})"
            )
    if want.classes is not None and classes is not None and classes != want.classes:
        problems.append(
            f"{label}: its {what} embedding has {want.classes} classes (null label {want.classes}), {source} "
            f"has {classes} (null label {classes})"
        )
    return problems


def _axes(spec: InputSpec) -> str:
    axes = zip(spec.names, spec.shape, strict=True)
    return ", ".join(name if size is None else f"{name}={size}" for name, size in axes)


def _engine_weights_problems(ref: WeightsRef, path: str) -> list[str]:
    """Weights the engine reads: a run directory (and one of its roles) or a safetensors file."""
    target = Path(ref.path)
    if names_a_run(target):
        return _run_role_problems(ref, target, path)
    problems = [f"{path}.{key}: applies to a run directory, and {ref.path} is not one" for key in ("role",) if ref.role]
    if not target.exists():
        problems.append(f"{path}.path: {ref.path}: no such file or directory")
    elif target.is_dir():
        problems.append(f"{path}.path: {ref.path} is a directory but not a run directory (no checkpoints/)")
    elif target.suffix != ".safetensors":
        problems.append(
            f"{path}.path: {ref.path}: not a weights format the engine reads (a .safetensors file in the network's "
            "own key names, or a run directory)"
        )
    return problems


def _run_role_problems(ref: WeightsRef, target: Path, path: str) -> list[str]:
    """The role ``ref`` takes from a run must be one the run trained (it keeps no weights of the others)."""
    from rcm_registry.engine.checkpoint import resolve_checkpoint

    try:
        saved = resolve_checkpoint(target).recipe()
    except UserError as exc:
        return [f"{path}.path: {exc}"]
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}.path: {ref.path}: cannot read the run's recipe.yaml ({exc})"]
    if not isinstance(saved, dict):
        return [f"{path}.path: {ref.path}: the run's recipe.yaml is not a mapping"]
    networks = saved.get("networks") if isinstance(saved.get("networks"), dict) else {}
    phases = saved.get("phases") if isinstance(saved.get("phases"), dict) else {}
    trained = [str((p or {}).get("trains") or name) for name, p in phases.items() if isinstance(p, dict) or p is None]
    role = ref.role or saved.get("output_network") or (trained[0] if trained else None)
    if ref.role is not None and ref.role not in networks:
        return [
            f"{path}.role: {ref.role!r} is not a network role of the run {ref.path}{suggest(ref.role, list(networks))}"
        ]
    if role is not None and role not in trained:
        return [f"{path}.role: {role!r} is not trained in the run {ref.path}, so it kept no weights of it"]
    return []
