"""The unit of registration: a named, typed factory with an attrs config class as its schema."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

#: Every kind of component the engine knows how to place in a distillation graph.
KINDS: tuple[str, ...] = (
    "schedule",
    "time_sampler",
    "network",
    "teacher",
    "loss",
    "rollout",
    "attention",
    "parallel",
    "optimizer",
    "ema",
    "dataset",
    "sampler",
    "metric",
    "codec",
    "logger",
)


def _check_kind(_: Any, __: attrs.Attribute, value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"unknown component kind {value!r}; kinds are: {', '.join(KINDS)}")


def _check_config(_: Any, __: attrs.Attribute, value: type) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise TypeError(f"Component.config must be an attrs class, got {value!r}")


def _check_name(_: Any, __: attrs.Attribute, value: str) -> None:
    if not value or any(c.isspace() for c in value) or value.startswith("_"):
        raise ValueError(f"component name {value!r} must be non-empty, without spaces or a leading '_'")


@attrs.frozen
class Component:
    """A component a plugin offers.

    Attributes:
        kind: one of :data:`KINDS`.
        name: what a recipe writes after ``use:``.
        factory: called with one validated instance of ``config``; returns the component object.
        config: an attrs class; its fields, types and validators are the recipe schema.
        summary: one line for ``rcm list``; defaults to the first line of the factory's docstring.
        provides: capabilities the built object has (e.g. ``"jvp"`` for a network whose forward works
            under forward-mode AD); other components' validation can require them.
    """

    kind: str = attrs.field(validator=_check_kind)
    name: str = attrs.field(validator=_check_name)
    factory: Callable[[Any], Any] = attrs.field(validator=attrs.validators.is_callable())
    config: type = attrs.field(validator=_check_config)
    summary: str = attrs.field(default="")
    provides: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)

    def __attrs_post_init__(self) -> None:
        if not self.summary:
            doc = inspect.getdoc(self.factory) or ""
            object.__setattr__(self, "summary", doc.strip().splitlines()[0] if doc.strip() else "")
