"""The registry: every loaded component by (kind, name), and which plugin brought it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from rcm_registry.component import KINDS, Component
from rcm_registry.errors import PluginConflictError, RecipeError, UnknownComponentError, UserError
from rcm_registry.structure import is_invalid, structure
from rcm_registry.suggestions import suggest

#: The distribution of this project: its plugins are the built-in areas (``core``, ``distill``, ...).
DISTRIBUTION = "rcm-registry"


def is_builtin_distribution(name: str) -> bool:
    """Whether ``name`` is this project's distribution (however the installer spelt it)."""
    return name.replace("_", "-").lower() == DISTRIBUTION


@attrs.frozen
class PluginInfo:
    """A loaded plugin: its entry-point name and the distribution that installed it."""

    name: str
    distribution: str
    version: str
    components: tuple[tuple[str, str], ...] = ()

    @property
    def builtin(self) -> bool:
        return is_builtin_distribution(self.distribution)


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded; the others still are.

    ``error`` is one line: the exception type and message and where it was raised (or what is wrong with
    the plugin's hooks).
    """

    name: str
    distribution: str
    error: str

    @property
    def builtin(self) -> bool:
        """A built-in area of this project: the installation is broken, not just one optional plugin."""
        return is_builtin_distribution(self.distribution)


class Registry:
    """Components by kind and name. Built by :func:`rcm_registry.registry` from the installed plugins."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self._origin: dict[tuple[str, str], PluginInfo] = {}
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []

    @property
    def builtin_failures(self) -> list[PluginFailure]:
        """The failures of this project's own areas (recipes cannot be trusted to validate without them)."""
        return [f for f in self.failures if f.builtin]

    def check_builtins(self) -> None:
        """Raise :class:`UserError` with one line per built-in area that failed to load (area, error, file:line).

        Third-party failures are only reported (``rcm plugins``); a broken built-in area means a broken
        installation, and recipes would otherwise fail later with their components "unknown".
        """
        broken = self.builtin_failures
        if broken:
            count = f"{len(broken)} built-in plugin area{'s' if len(broken) != 1 else ''}"
            raise UserError(
                f"{count} of {DISTRIBUTION} failed to load (fix the error or reinstall {DISTRIBUTION}; "
                "`rcm plugins` lists every plugin):\n" + "\n".join(f"  {f.name}: {f.error}" for f in broken)
            )

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
        comp = self.get(kind, name)
        problems: list[str] = []
        value = structure(comp.config, config, f"{kind}:{name}", problems, self)
        if problems or is_invalid(value):
            raise RecipeError(problems)
        return value

    def build(self, kind: str, name: str, /, **config: Any) -> Any:
        """Build the component ``name`` of ``kind`` from keyword config (as it would be in YAML)."""
        return self.get(kind, name).factory(self.config(kind, name, **config))
