"""Inference-only options for the network a command samples: another attention backend, FP8 linear layers,
CUDA-graph replay.

They come from the recipe's ``inference:`` section, overridden by command-line flags (``--attention NAME``,
``--fp8-linear``, ``--cuda-graphs``), and apply to the one network ``rcm sample`` / ``rcm generate`` load,
never to training.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from rcm_registry.errors import UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.protocols import head_dim_problem, network_inputs
from rcm_registry.recipe.sections import Recipe
from rcm_registry.schema import ComponentSpec, component_kind


@attrs.frozen
class InferenceOptions:
    """The attention backend to sample with (None: the network's own), whether linears run in FP8, and
    whether the calls replay from CUDA graphs."""

    attention: ComponentSpec | None = None
    fp8_linear: bool = False
    cuda_graphs: bool = False

    def describe(self) -> str:
        """``attention int8_sage, fp8 linear, cuda graphs``, or ``default precision`` when no option is on."""
        parts = ([f"attention {self.attention.name}"] if self.attention is not None else []) + (
            ["fp8 linear"] if self.fp8_linear else []
        )
        text = ", ".join(parts) or "default precision"
        return f"{text}, cuda graphs" if self.cuda_graphs else text


def inference_options(
    recipe: Recipe, attention: str | None = None, fp8_linear: bool | None = None, cuda_graphs: bool | None = None
) -> InferenceOptions:
    """The recipe's ``inference:`` section with ``attention`` (a backend name), ``fp8_linear`` and
    ``cuda_graphs`` on top (None: the recipe's)."""
    section = recipe.body.inference
    spec = section.attention
    if attention is not None:
        reg = registry()
        try:
            spec = ComponentSpec(component=reg.get("attention", attention), config=reg.config("attention", attention))
        except UserError as exc:
            raise UserError(f"--attention {attention}: {exc}") from None
    return InferenceOptions(
        attention=spec,
        fp8_linear=section.fp8_linear if fp8_linear is None else bool(fp8_linear),
        cuda_graphs=section.cuda_graphs if cuda_graphs is None else bool(cuda_graphs),
    )


def check_device(options: InferenceOptions, device: torch.device) -> None:
    """Refuse options the sampling device cannot run, before any weights are read."""
    if options.cuda_graphs and device.type != "cuda":
        raise UserError(
            f"inference.cuda_graphs / --cuda-graphs: CUDA graphs need a CUDA device, and this network samples on "
            f"{device} (pass --set inference.cuda_graphs=false, or sample on a GPU)"
        )


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


def apply_after_loading(net: nn.Module, options: InferenceOptions) -> nn.Module:
    """The loaded network as it samples: FP8 linears swapped in (after its weights are loaded and it is on its
    device in its dtype, since a later ``.to(dtype)`` would cast the FP8 buffers), then, with
    ``cuda_graphs``, wrapped to replay its calls (last: the graphs capture the network as it finally runs)."""
    if options.fp8_linear:
        from rcm_registry.engine.fp8_linear import fp8_linear_blocks

        fp8_linear_blocks(net)
    if options.cuda_graphs:
        from rcm_registry.engine.cuda_graphs import GraphedNetwork

        return GraphedNetwork(net)
    return net
