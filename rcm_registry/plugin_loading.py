"""Discover plugins through entry points and fill a :class:`Registry` from their hooks."""

from __future__ import annotations

import importlib
import os
import threading
import traceback
from importlib import metadata
from typing import Any

import pluggy

from rcm_registry.errors import PluginConflictError
from rcm_registry.registry import PluginFailure, PluginInfo, Registry, is_builtin_distribution
from rcm_registry.suggestions import suggest

ENTRY_POINT_GROUP = "rcm_registry"
#: The distribution recorded for plugins passed to :func:`load_registry` as objects.
IN_PROCESS = "<in-process>"
#: Set to 1 to load only this distribution's own (built-in) plugins.
DISABLE_AUTOLOAD_ENV = "RCM_DISABLE_PLUGIN_AUTOLOAD"

_lock = threading.Lock()
_loaded: Registry | None = None


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "?"
    return dist.metadata["Name"] or "<unknown>", dist.version or "?"


def load_registry(extra_plugins: list[tuple[str, Any]] | None = None) -> Registry:
    """A fresh registry from the installed entry points (and ``extra_plugins``: (name, object) pairs).

    A plugin that fails to import, whose hook raises, or that marks a function with
    :data:`~rcm_registry.hookimpl` under a name no hook has (a misspelt hook), is recorded in
    ``registry.failures`` with its name and distribution and contributes nothing; the others still
    load. Duplicate (kind, name) raises :class:`PluginConflictError` naming both distributions.
    """
    spec_module = importlib.import_module("rcm_registry.hookspec")
    pm = pluggy.PluginManager(spec_module.PROJECT_NAME)
    pm.add_hookspecs(spec_module)
    registry = Registry()
    sources: dict[str, PluginInfo] = {}  # by the name the plugin is registered under in ``pm``
    entry_points = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda e: (not is_builtin_distribution(_dist_of(e)[0]), e.name),
    )
    for ep in entry_points:
        dist, version = _dist_of(ep)
        if _autoload_disabled() and not is_builtin_distribution(dist):
            continue
        key = f"{dist}:{ep.name}"
        if key in sources:  # the same distribution visible twice on sys.path
            continue
        try:
            obj = ep.load()
            pm.register(obj, name=key)
        except Exception as exc:  # any import failure of a third-party plugin must not stop the rest
            registry.failures.append(PluginFailure(ep.name, dist, _one_line(exc)))
            continue
        sources[key] = PluginInfo(name=ep.name, distribution=dist, version=version)
    for name, obj in extra_plugins or []:
        key = f"<extra>:{name}"
        pm.register(obj, name=key)
        sources[key] = PluginInfo(name=name, distribution=IN_PROCESS, version="-")
    _drop_unknown_hooks(pm, sources, registry)
    impls = {impl.plugin_name: impl for impl in pm.hook.rcm_components.get_hookimpls()}
    for key, info in sources.items():
        impl = impls.get(key)
        if impl is None:
            registry.add_plugin(info, [])
            continue
        try:
            components = impl.function()
        except Exception as exc:
            registry.failures.append(PluginFailure(info.name, info.distribution, _one_line(exc)))
            continue
        try:
            registry.add_plugin(info, components)
        except PluginConflictError:
            raise
        except TypeError as exc:
            registry.failures.append(PluginFailure(info.name, info.distribution, str(exc)))
    return registry


def _drop_unknown_hooks(pm: pluggy.PluginManager, sources: dict[str, PluginInfo], registry: Registry) -> None:
    """Record and unregister every plugin with a hook implementation that matches no hook specification.

    pluggy accepts such an implementation silently at registration (a misspelt ``rcm_component`` would
    simply never be called); :meth:`pluggy.PluginManager.check_pending` names one offender at a time.
    """
    hooks = [name for name, caller in vars(pm.hook).items() if not name.startswith("_") and caller.has_spec()]
    while True:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            offender = exc.plugin
        else:
            return
        unknown = sorted(caller.name for caller in pm.get_hookcallers(offender) or () if not caller.has_spec())
        info = sources.pop(str(pm.get_name(offender)))  # every plugin in ``pm`` is one of ``sources``
        pm.unregister(offender)
        problems = "; ".join(
            f"unknown hook {name!r} (marked with @rr.hookimpl){suggest(name, hooks)}" for name in unknown
        )
        registry.failures.append(PluginFailure(info.name, info.distribution, problems))


def _one_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    message = " ".join(str(exc).split("\n"))
    return f"{type(exc).__name__}: {message}{where}"


def registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, loaded from the installed plugins on first use."""
    global _loaded
    with _lock:
        if _loaded is None or reload:
            _loaded = load_registry()
        return _loaded
