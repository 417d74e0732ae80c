"""Inference-only options for the network a command samples: another attention backend, FP8 linear layers.

They come from the recipe's ``inference:`` section, overridden by command-line flags (``--attention NAME``,
``--fp8-linear``), and apply to the one network ``rcm sample`` / ``rcm generate`` load, never to training.
"""

from __future__ import annotations

import attrs
from torch import nn

from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.protocols import head_dim_problem, network_inputs
from rcm_registry.recipe.sections import Recipe
from rcm_registry.schema import ComponentSpec, component_kind


@attrs.frozen
class InferenceOptions:
    """The attention backend to sample with (None: the network's own) and whether linears run in FP8."""

    attention: ComponentSpec | None = None
    fp8_linear: bool = False

    def describe(self) -> str:
        """``attention int8_sage, fp8 linear``, or ``default precision`` when no option is on."""
        parts = ([f"attention {self.attention.name}"] if self.attention is not None else []) + (
            ["fp8 linear"] if self.fp8_linear else []
        )
        return ", ".join(parts) or "default precision"


def inference_options(recipe: Recipe, attention: str | None = None, fp8_linear: bool | None = None) -> InferenceOptions:
    """The recipe's ``inference:`` section with ``attention`` (a backend name) and ``fp8_linear`` on top."""
    section = recipe.body.inference
    spec = section.attention
    if attention is not None:
        reg = registry()
        try:
            spec = ComponentSpec(component=reg.get("attention", attention), config=reg.config("attention", attention))
        except UserError as exc:
            raise UserError(f"--attention {attention}: {exc}") from None
    return InferenceOptions(attention=spec, fp8_linear=section.fp8_linear if fp8_linear is None else bool(fp8_linear))


def with_attention(network: ComponentSpec, attention: ComponentSpec, role: str) -> ComponentSpec:
    """The network spec with its ``attention`` component replaced; a UserError if it has none or the head dim
    does not suit the backend."""
    fields = attrs.fields_dict(type(network.config)) if attrs.has(type(network.config)) else {}
    field = fields.get("attention")
    if field is None or component_kind(field) != "attention":
        raise UserError(
            f"--attention / inference.attention: network {role!r} ({network.name}) has no `attention` setting "
            "to replace"
        )
    inputs = network_inputs(network.config)
    if inputs is not None and inputs.head_dim is not None:
        problem = head_dim_problem(attention.config, inputs.head_dim)
        if problem:
            raise UserError(f"--attention / inference.attention ({attention.name}) for network {role!r}: {problem}")
    return attrs.evolve(network, config=attrs.evolve(network.config, attention=attention))


def apply_after_loading(net: nn.Module, options: InferenceOptions) -> None:
    """What changes the loaded network itself (FP8 linears): after its weights are loaded and it is on its
    device in its dtype, since a later ``.to(dtype)`` would cast the FP8 buffers."""
    if options.fp8_linear:
        from rcm_registry.engine.fp8_linear import fp8_linear_blocks

        fp8_linear_blocks(net)
