"""rcm-registry: distil diffusion transformers into few-step students with rCM.

Public API::

    import rcm_registry as rr

    @rr.hookimpl
    def rcm_components():
        return [rr.Component(kind="loss", name="my_loss", factory=MyLoss, config=MyLossConfig)]

    reg = rr.registry()
    loss = reg.build("loss", "my_loss", weight=2.0)
"""

from rcm_registry.component import KINDS, Component
from rcm_registry.errors import PluginConflictError, RecipeError, UnknownComponentError, UserError
from rcm_registry.hookspec import hookimpl
from rcm_registry.plugin_loading import load_registry, registry
from rcm_registry.registry import PluginFailure, PluginInfo, Registry
from rcm_registry.schema import ComponentSpec

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "Component",
    "ComponentSpec",
    "PluginConflictError",
    "PluginFailure",
    "PluginInfo",
    "RecipeError",
    "Registry",
    "UnknownComponentError",
    "UserError",
    "__version__",
    "hookimpl",
    "load_registry",
    "registry",
]
