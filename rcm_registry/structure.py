"""Turn plain YAML data into validated config instances, collecting every problem with its path.

This is the recipe validator's engine: :func:`structure` walks an attrs class's fields, converts and
checks each value against its type annotation and validators, recurses into nested attrs classes and
components (``{use: NAME, ...}``), and appends one readable line per problem to ``problems``. Nothing
is raised for user mistakes, so a single pass reports all of them.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, Union

import attrs

from rcm_registry.component import Component
from rcm_registry.schema import MISSING, ComponentSpec, Kind, component_kind, is_entry
from rcm_registry.suggestions import suggest

_INVALID = object()  # marks a value that produced a problem

#: Integers must fit a 64-bit signed int (what torch and numpy hold them in).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Floats must be finite and fit float32 (the tensors they scale; a bigger value becomes inf there).
FLOAT_MAX = 3.4028234663852886e38


class ComponentLookup(Protocol):
    """What structuring needs from the registry: the component of a (kind, name), and the names of a kind.

    :class:`rcm_registry.registry.Registry` is one; this module does not import it, so that the registry
    can build configs through :func:`structure` without an import cycle.
    """

    def find(self, kind: str, name: str) -> Component | None: ...
    def names(self, kind: str) -> list[str]: ...


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key == "":  # an empty key (`"": 1`) would vanish from the path
        key = "''"
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def structure(
    cls: type,
    data: Any,
    path: str,
    problems: list[str],
    registry: ComponentLookup,
    *,
    given: Mapping[str, Any] | None = None,
) -> Any:
    """Build an instance of the attrs class ``cls`` from ``data``; problems go to ``problems``.

    ``given`` holds fields already converted elsewhere (taken as they are). Returns the instance, or an
    invalid marker when there were problems (check ``problems``).
    """
    if not isinstance(data, Mapping):
        problems.append(f"{path or '<recipe>'}: expected a mapping, got {describe(data)}")
        return _INVALID
    hints = typing.get_type_hints(cls, include_extras=True)
    given = dict(given or {})
    fields = {f.name: f for f in attrs.fields(cls) if f.init and f.name not in given}
    values: dict[str, Any] = {}
    ok = not any(v is _INVALID for v in given.values())
    for key in data:
        if key not in fields:
            problems.append(f"{_join(path, str(key))}: unknown key{suggest(str(key), list(fields))}")
            ok = False
    for name, field in fields.items():
        here = _join(path, name)
        if name not in data:
            if field.default is attrs.NOTHING:
                problems.append(f"{here}: required key missing")
                ok = False
                continue
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()  # type: ignore[union-attr]
            if component_kind(field) is None or default is None:
                values[name] = default
                continue
            raw = default  # a component default is YAML-shaped: validate it like user input
        else:
            raw = data[name]
        value = _convert(raw, hints.get(name, Any), field, here, problems, registry)
        if value is _INVALID:
            ok = False
            continue
        if field.validator is not None:
            try:
                field.validator(None, field, value)
            except (ValueError, TypeError) as exc:
                problems.append(f"{here}: {_clean(exc, name)}")
                ok = False
                continue
        values[name] = value
    if not ok:
        return _INVALID
    try:
        return cls(**values, **given)
    except (ValueError, TypeError) as exc:
        problems.append(f"{path or '<recipe>'}: {_clean(exc, None)}")
        return _INVALID


def _clean(exc: Exception, name: str | None) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    if name and text.startswith(f"'{name}' "):  # attrs' own validators repeat the field name
        text = text[len(name) + 3 :]
    return text


def is_invalid(value: Any) -> bool:
    return value is _INVALID


def _convert(
    raw: Any,
    hint: Any,
    field: attrs.Attribute | None,
    path: str,
    problems: list[str],
    registry: ComponentLookup,
) -> Any:
    if isinstance(raw, str) and raw == MISSING:
        problems.append(f"{path}: value required (write it in the recipe or pass --set {path}=VALUE)")
        return _INVALID
    kind = component_kind(field) if field is not None else None
    if kind is not None:
        if raw is None and _optional(hint):
            return None
        return structure_component(kind, raw, path, problems, registry)
    return _convert_type(raw, hint, path, problems, registry)


def _optional(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _is_union(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is Union or origin is types.UnionType


def structure_component(
    kind: str, raw: Any, path: str, problems: list[str], registry: ComponentLookup
) -> ComponentSpec | Any:
    """Validate ``{use: NAME, ...config}`` (or just ``NAME``) against the registered component."""
    if isinstance(raw, str):
        raw = {"use": raw}
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a {kind} component ({{use: NAME, ...}}), got {describe(raw)}")
        return _INVALID
    name = raw.get("use")
    if not isinstance(name, str):
        problems.append(f"{path}.use: required: the name of a registered {kind}{suggest('', registry.names(kind))}")
        return _INVALID
    found: Component | None = registry.find(kind, name)
    if found is None:
        problems.append(f"{path}.use: unknown {kind} {name!r}{suggest(name, registry.names(kind))}")
        return _INVALID
    rest = {k: v for k, v in raw.items() if k != "use"}
    config = structure(found.config, rest, path, problems, registry)
    if config is _INVALID:
        return _INVALID
    return ComponentSpec(component=found, config=config)


def structure_entry(cls: type, raw: Any, path: str, problems: list[str], registry: ComponentLookup) -> Any:
    """An :func:`rcm_registry.schema.entry` class from its flat YAML form: engine keys beside the component's."""
    if isinstance(raw, str):
        raw = {"use": raw}
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a mapping ({{use: NAME, ...}}), got {describe(raw)}")
        return _INVALID
    engine_keys = [f.name for f in attrs.fields(cls) if f.init and f.name != "spec"]
    own = {k: v for k, v in raw.items() if k in engine_keys}
    rest = {k: v for k, v in raw.items() if k not in engine_keys}
    hints = typing.get_type_hints(cls, include_extras=True)
    spec = _convert_type(rest, hints["spec"], path, problems, registry)
    value = structure(cls, own, path, problems, registry, given={"spec": spec})
    return _INVALID if spec is _INVALID else value


def _convert_type(raw: Any, hint: Any, path: str, problems: list[str], registry: ComponentLookup) -> Any:
    if hint is Any or hint is object:
        return raw
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        kinds = [m.name for m in hint.__metadata__ if isinstance(m, Kind)]
        if kinds:
            return structure_component(kinds[0], raw, path, problems, registry)
        return _convert_type(raw, args[0], path, problems, registry)
    if _is_union(hint):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert_type(raw, options[0], path, problems, registry)
        for option in options:  # first option that converts without a problem wins
            trial: list[str] = []
            value = _convert_type(raw, option, path, trial, registry)
            if not trial:
                return value
        problems.append(f"{path}: expected {_name(hint)}, got {describe(raw)}")
        return _INVALID
    if origin is Literal:
        if raw in args:
            return raw
        problems.append(
            f"{path}: expected one of {', '.join(repr(a) for a in args)}, got {describe(raw)}"
            + (suggest(raw, [str(a) for a in args]) if isinstance(raw, str) else "")
        )
        return _INVALID
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        return _bad(path, "a boolean (true/false)", raw, problems)
    if hint is int:
        number = int(raw) if isinstance(raw, float) and raw.is_integer() else raw
        if isinstance(number, int) and not isinstance(number, bool):
            if not INT_MIN <= number <= INT_MAX:
                problems.append(f"{path}: {raw!r} is out of range for an integer (at most {INT_MAX}, 64-bit)")
                return _INVALID
            return number
        return _bad(path, "int", raw, problems)
    if hint is float:
        value: float | None = None
        if isinstance(raw, float):
            value = raw
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = float(raw) if abs(raw) <= FLOAT_MAX else math.inf  # float() of a huge int would raise
        elif isinstance(raw, str):  # a quoted number, or one from a loader without exponent floats
            try:
                value = float(raw)
            except ValueError:
                pass
        if value is None:
            return _bad(path, "float", raw, problems)
        if not abs(value) <= FLOAT_MAX:  # NaN fails too
            problems.append(
                f"{path}: {describe(raw)} is out of range for a float (finite, at most {FLOAT_MAX:.4g} in "
                "magnitude: the float32 range of the tensors it meets)"
            )
            return _INVALID
        return value
    if hint is str:
        if isinstance(raw, str):
            return raw
        return _bad(path, "string", raw, problems)
    if origin in (list, Sequence) or hint is list:
        if not isinstance(raw, list):
            return _bad(path, "a list", raw, problems)
        item = args[0] if args else Any
        out = [_convert_type(v, item, _join(path, i), problems, registry) for i, v in enumerate(raw)]
        return _INVALID if any(v is _INVALID for v in out) else out
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            return _bad(path, f"a list of {len(args)}", raw, problems)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(raw)
        else:
            items = list(args)
            if len(raw) != len(items):
                problems.append(f"{path}: expected a list of {len(items)} values, got {len(raw)}")
                return _INVALID
        out = [
            _convert_type(v, t, _join(path, i), problems, registry)
            for i, (v, t) in enumerate(zip(raw, items, strict=True))
        ]
        return _INVALID if any(v is _INVALID for v in out) else tuple(out)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(raw, Mapping):
            return _bad(path, "a mapping", raw, problems)
        key_type = args[0] if len(args) == 2 else Any
        value_type = args[1] if len(args) == 2 else Any
        out_map = {}
        bad_key = False
        for k, v in raw.items():
            if key_type is str and not isinstance(k, str):
                problems.append(non_string_key(path, k))
                bad_key = True
                continue
            out_map[str(k)] = _convert_type(v, value_type, _join(path, str(k)), problems, registry)
        return _INVALID if bad_key or any(v is _INVALID for v in out_map.values()) else out_map
    if is_entry(hint):
        return structure_entry(hint, raw, path, problems, registry)
    if isinstance(hint, type) and attrs.has(hint):
        return structure(hint, raw, path, problems, registry)
    if hint is ComponentSpec:
        raise TypeError(
            f"{path}: a ComponentSpec field needs a kind: use schema.component(KIND) or schema.LossSpec etc."
        )
    if isinstance(hint, type):
        if isinstance(raw, hint):
            return raw
        return _bad(path, hint.__name__, raw, problems)
    return raw


def non_string_key(path: str, key: Any) -> str:
    """The problem line for a mapping key that is not a string where names are expected."""
    if key is None:
        what = "null (YAML reads ~ and null as no value)"
    elif isinstance(key, bool):
        what = f"the boolean {key} (YAML reads yes/no/on/off/true/false as booleans)"
    else:
        what = f"the {type(key).__name__} {key!r}"
    return f"{_join(path, str(key))}: a name is expected here, got {what}; write it in quotes if it is meant as a name"


def _name(hint: Any) -> str:
    if _is_union(hint):  # e.g. bool | Literal['auto']: "bool or one of 'auto'"
        return " or ".join(_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _bad(path: str, expected: str, raw: Any, problems: list[str]) -> Any:
    problems.append(f"{path}: expected {expected}, got {describe(raw)}")
    return _INVALID
