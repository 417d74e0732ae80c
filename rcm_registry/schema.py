"""Building blocks for component config classes: nested components and readable range checks.

A component's ``config`` is an attrs class. Field types are checked and converted by the recipe
validator (:mod:`rcm_registry.structure`); these helpers cover what plain attrs cannot say::

    @attrs.define
    class MyLossConfig:
        weight: float = attrs.field(default=1.0, validator=schema.non_negative)
        time: ComponentSpec = schema.component("time_sampler", default={"use": "uniform"})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import attrs

from rcm_registry.component import KINDS, Component

#: A recipe value that must be filled in before running (``data.path: ???``).
MISSING = "???"

_KIND_KEY = "rcm_kind"


@attrs.frozen
class ComponentSpec:
    """A validated reference to a component: which one, and its config instance."""

    component: Component
    config: Any

    @property
    def kind(self) -> str:
        return self.component.kind

    @property
    def name(self) -> str:
        return self.component.name

    def build(self) -> Any:
        """Call the component's factory with the validated config."""
        return self.component.factory(self.config)

    def has(self, capability: str) -> bool:
        return capability in self.component.provides


@attrs.frozen
class Kind:
    """Marks ``Annotated[ComponentSpec, Kind("loss")]``: a component of that kind (for lists, dicts)."""

    name: str


ScheduleSpec = Annotated[ComponentSpec, Kind("schedule")]
TimeSamplerSpec = Annotated[ComponentSpec, Kind("time_sampler")]
NetworkSpec = Annotated[ComponentSpec, Kind("network")]
TeacherSpec = Annotated[ComponentSpec, Kind("teacher")]
LossSpec = Annotated[ComponentSpec, Kind("loss")]
RolloutSpec = Annotated[ComponentSpec, Kind("rollout")]
AttentionSpec = Annotated[ComponentSpec, Kind("attention")]
ParallelSpec = Annotated[ComponentSpec, Kind("parallel")]
OptimizerSpec = Annotated[ComponentSpec, Kind("optimizer")]
EmaSpec = Annotated[ComponentSpec, Kind("ema")]
DatasetSpec = Annotated[ComponentSpec, Kind("dataset")]
SamplerSpec = Annotated[ComponentSpec, Kind("sampler")]
MetricSpec = Annotated[ComponentSpec, Kind("metric")]
CodecSpec = Annotated[ComponentSpec, Kind("codec")]
LoggerSpec = Annotated[ComponentSpec, Kind("logger")]


def component(kind: str, *, default: Mapping[str, Any] | str | object | None = attrs.NOTHING) -> Any:
    """An attrs field holding a nested component, written in YAML as ``{use: NAME, ...config}``.

    ``default`` is the YAML form (a mapping with ``use``, or just the name); ``None`` makes the
    component optional.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}")
    if isinstance(default, Mapping):
        frozen = dict(default)
        return attrs.field(factory=lambda: dict(frozen), metadata={_KIND_KEY: kind})
    return attrs.field(default=default, metadata={_KIND_KEY: kind})


_ENTRY_KEY = "__rcm_entry__"


def entry(cls: type) -> type:
    """Class decorator for an attrs class written flat in YAML: a component plus engine keys beside it.

    The class's ``spec`` field (``Annotated[ComponentSpec, Kind(...)]``) is the component; its other
    fields are keys the engine reads from the same mapping, so ``{use: dmd, weight: 0.1, start: 400}``
    gives ``spec`` the loss ``dmd`` with ``weight: 0.1`` and the entry ``start=400``.
    """
    if not attrs.has(cls) or "spec" not in attrs.fields_dict(cls):
        raise TypeError(f"schema.entry: {cls.__name__} must be an attrs class with a `spec` field")
    setattr(cls, _ENTRY_KEY, True)
    return cls


def is_entry(cls: Any) -> bool:
    """Whether ``cls`` was made by :func:`entry`."""
    return isinstance(cls, type) and bool(getattr(cls, _ENTRY_KEY, False))


def component_kind(field: attrs.Attribute) -> str | None:
    """The component kind of a field made by :func:`component`, else None."""
    return field.metadata.get(_KIND_KEY)


def _check(predicate: Callable[[float], bool], text: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validator(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and (math.isnan(v) or not predicate(v)):
                raise ValueError(f"must be {text}, got {v!r}")

    return validator


positive = _check(lambda v: v > 0, "> 0")
non_negative = _check(lambda v: v >= 0, ">= 0")
finite = _check(math.isfinite, "finite")
#: A classifier-free guidance scale w (F_u + w·(F_c − F_u)).
guidance_scale = _check(
    lambda v: 0 <= v < math.inf,
    "a finite CFG scale >= 0 (w in F_u + w·(F_c − F_u): 1 is the conditional model alone, no guidance; "
    "0 the unconditional model; above 1 guides)",
)


def at_most(high: float, why: str = "") -> Any:
    """Validator: value <= high (``why`` says where the cap comes from)."""
    shown = int(high) if float(high).is_integer() else high
    return _check(lambda v: v <= high, f"<= {shown}{f' ({why})' if why else ''}")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """Validator: low <= value <= high (either end may be open)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"

    def ok(v: float) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return _check(ok, f"in {lo}{low}, {high}{hi}")
