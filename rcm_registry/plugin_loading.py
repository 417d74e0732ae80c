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
from rcm_registry.registry import PluginFailure, PluginInfo, Registry

ENTRY_POINT_GROUP = "rcm_registry"
DISTRIBUTION = "rcm-registry"
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


def _same_project(name: str) -> bool:
    return name.replace("_", "-").lower() == DISTRIBUTION


def load_registry(extra_plugins: list[tuple[str, Any]] | None = None) -> Registry:
    """A fresh registry from the installed entry points (and ``extra_plugins``: (name, object) pairs).

    A plugin that fails to import, or whose hook raises, is recorded in ``registry.failures`` with
    its name and distribution; the others still load. Duplicate (kind, name) raises
    :class:`PluginConflictError` naming both distributions.
    """
    spec_module = importlib.import_module("rcm_registry.hookspec")
    pm = pluggy.PluginManager(spec_module.PROJECT_NAME)
    pm.add_hookspecs(spec_module)
    registry = Registry()
    sources: list[tuple[PluginInfo, Any]] = []
    entry_points = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (not _same_project(_dist_of(e)[0]), e.name)
    )
    seen_names: set[str] = set()
    for ep in entry_points:
        dist, version = _dist_of(ep)
        if _autoload_disabled() and not _same_project(dist):
            continue
        key = f"{dist}:{ep.name}"
        if key in seen_names:  # the same distribution visible twice on sys.path
            continue
        seen_names.add(key)
        info = PluginInfo(name=ep.name, distribution=dist, version=version)
        try:
            obj = ep.load()
            pm.register(obj, name=key)
        except Exception as exc:  # any import failure of a third-party plugin must not stop the rest
            registry.failures.append(PluginFailure(ep.name, dist, _one_line(exc)))
            continue
        sources.append((info, obj))
    for name, obj in extra_plugins or []:
        pm.register(obj, name=f"<extra>:{name}")
        sources.append((PluginInfo(name=name, distribution="<in-process>", version="-"), obj))
    impls = {impl.plugin_name: impl for impl in pm.hook.rcm_components.get_hookimpls()}
    for info, _ in sources:
        key = f"{info.distribution}:{info.name}" if info.distribution != "<in-process>" else f"<extra>:{info.name}"
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


def _one_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, loaded from the installed plugins on first use."""
    global _loaded
    with _lock:
        if _loaded is None or reload:
            _loaded = load_registry()
        return _loaded
