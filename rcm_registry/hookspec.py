"""The plugin contract: every hook a plugin may implement, documented in one place.

A plugin is any importable object (usually a module) exposed through an entry point in the group
``rcm_registry``::

    # pyproject.toml of the plugin's distribution
    [project.entry-points.rcm_registry]
    my_plugin = "my_package.rcm_plugin"

and implementing one or more of the hooks below with :data:`hookimpl`::

    import rcm_registry as rr

    @rr.hookimpl
    def rcm_components():
        return [rr.Component(kind="loss", name="my_loss", factory=MyLoss, config=MyLossConfig)]

A component's ``kind`` is one of :data:`rcm_registry.KINDS` (``schedule``, ``time_sampler``, ``network``,
``teacher``, ``loss``, ``rollout``, ``attention``, ``parallel``, ``optimizer``, ``ema``, ``dataset``,
``sampler``, ``metric``, ``codec``, ``logger``); :mod:`rcm_registry.protocols` says what each kind's object does.

Hook results are never merged by order: every component has a (kind, name) that must be unique
across all plugins, and recipes pick components by that name.

A function marked with :data:`hookimpl` whose name is not one of the hooks below (``rcm_component``)
makes its plugin fail to load, with the closest hook name in the message: pluggy alone would register
it and never call it. What the objects a component builds must do is in :mod:`rcm_registry.protocols`.
"""

from __future__ import annotations

import pluggy

from rcm_registry.component import Component

PROJECT_NAME = "rcm_registry"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def rcm_components() -> list[Component]:
    """Return the components this plugin offers.

    Called once per plugin when the registry loads. Return a list (possibly empty) of
    :class:`~rcm_registry.Component`. Do the work of building objects in the components' factories,
    not here: this hook runs for every command, including ``rcm list``.
    """
    raise NotImplementedError  # a hook specification has no body of its own
