"""The registry: every loaded component by (kind, name), and which plugin brought it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from rcm_registry.component import KINDS, Component
from rcm_registry.errors import PluginConflictError, RecipeError, UnknownComponentError


@attrs.frozen
class PluginInfo:
    """A loaded plugin: its entry-point name and the distribution that installed it."""

    name: str
    distribution: str
    version: str
    components: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded; the others still are."""

    name: str
    distribution: str
    error: str


class Registry:
    """Components by kind and name. Built by :func:`rcm_registry.registry` from the installed plugins."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self._origin: dict[tuple[str, str], PluginInfo] = {}
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []

    # -- filling -------------------------------------------------------------------------------
    def add_plugin(self, info: PluginInfo, components: list[Component]) -> None:
        """Register ``components`` as brought by ``info``; a (kind, name) clash raises."""
        if not isinstance(components, list) or not all(isinstance(c, Component) for c in components):
            raise TypeError(
                f"plugin {info.name!r} ({info.distribution}): rcm_components() must return a list of "
                f"rcm_registry.Component, got {components!r}"
            )
        seen: set[tuple[str, str]] = set()
        for comp in components:
            key = (comp.kind, comp.name)
            if key in self._components or key in seen:
                other = self._origin.get(key, info)
                raise PluginConflictError(
                    f"{comp.kind} {comp.name!r} is registered twice: by plugin {other.name!r} from "
                    f"distribution {other.distribution!r} and by plugin {info.name!r} from distribution "
                    f"{info.distribution!r}; uninstall one of them"
                )
            seen.add(key)
        info = attrs.evolve(info, components=tuple(sorted(seen)))
        for comp in components:
            self._components[(comp.kind, comp.name)] = comp
            self._origin[(comp.kind, comp.name)] = info
        self.plugins.append(info)

    # -- lookups -------------------------------------------------------------------------------
    def find(self, kind: str, name: str) -> Component | None:
        return self._components.get((kind, name))

    def get(self, kind: str, name: str) -> Component:
        """The component, or :class:`UnknownComponentError` with the closest names."""
        from rcm_registry.structure import suggest

        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}{suggest(kind, KINDS)}")
        found = self.find(kind, name)
        if found is None:
            raise UnknownComponentError(f"unknown {kind} {name!r}{suggest(name, self.names(kind))}")
        return found

    def origin(self, kind: str, name: str) -> PluginInfo:
        self.get(kind, name)
        return self._origin[(kind, name)]

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def components(self, kind: str | None = None) -> Iterator[Component]:
        for (k, _), comp in sorted(self._components.items()):
            if kind is None or k == kind:
                yield comp

    # -- building ------------------------------------------------------------------------------
    def config(self, kind: str, name: str, /, **config: Any) -> Any:
        """Validate ``config`` against the component's schema; all problems are raised together."""
        from rcm_registry.structure import is_invalid, structure

        comp = self.get(kind, name)
        problems: list[str] = []
        value = structure(comp.config, config, f"{kind}:{name}", problems, self)
        if problems or is_invalid(value):
            raise RecipeError(problems)
        return value

    def build(self, kind: str, name: str, /, **config: Any) -> Any:
        """Build the component ``name`` of ``kind`` from keyword config (as it would be in YAML)."""
        return self.get(kind, name).factory(self.config(kind, name, **config))
