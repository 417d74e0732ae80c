"""``fsdp2``: parameters, gradients and optimiser states sharded with ``fully_shard`` over a DeviceMesh.

The world is a (replicate × shard × context_parallel) grid of ranks. Parameters are sharded over the
shard and context-parallel ranks together (context-parallel ranks hold the same parameters, so they can
share the shards) and replicated across ``replicate`` groups (hybrid sharding: the all-gathers stay
inside a group, only gradients cross groups). Every transformer block (the network's ``blocks``) is its
own FSDP unit, the rest of the network the root unit. The frozen teacher is sharded too, and networks
initialised from another role (``init_from``) are built on the meta device and filled shard by shard
from their parent's shards, so a full copy of them never exists.

The batch is split over the replicate × shard ranks; the ranks of a context-parallel group hold the same
samples and split their token sequence (Ulysses, :mod:`rcm_plugins.parallel.ulysses`). Gradients are
averaged over the whole mesh, which together with the loss scaling of the engine gives the gradient of
the global batch (see ``Parallel`` in :mod:`rcm_registry.protocols`).

Mixed precision: with ``run.precision: bf16`` (or ``param_dtype: bf16``) parameters are all-gathered
in bf16 for compute and gradients are reduced in float32; the sharded master weights stay in their
own dtype.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.parallel._base import CommonConfig, Strategy
from rcm_plugins.parallel.activation_checkpointing import apply_activation_checkpointing, blocks_of
from rcm_plugins.parallel.ulysses import UlyssesSequenceParallel
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.errors import UserError
from rcm_registry.protocols import attention_heads

#: The capability a network component declares when it calls a ``sequence_parallel`` object.
CONTEXT_PARALLEL = "context_parallel"


@attrs.define(kw_only=True)
class Fsdp2Config(CommonConfig):
    """``parallel: {use: fsdp2, shard: 8, replicate: 4, context_parallel: 2, activation_checkpointing: block}``"""

    #: Ranks one parameter is sharded over, before context parallel (default: the world size divided by
    #: replicate × context_parallel).
    shard: int | None = attrs.field(default=None, validator=schema.positive)
    #: Groups that each hold a full set of shards (hybrid sharding); gradients are averaged across them.
    replicate: int = attrs.field(default=1, validator=schema.positive)
    #: Ulysses context parallel: ranks that split the token sequence of the same samples.
    context_parallel: int = attrs.field(default=1, validator=schema.positive)
    #: Compute dtype of the all-gathered parameters: ``auto`` (bf16 when run.precision is bf16), ``bf16``
    #: or ``fp32`` (no cast). Gradients are reduced in float32 whenever parameters are cast.
    param_dtype: Literal["auto", "bf16", "fp32"] = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "bf16", "fp32"))
    )
    #: Free the all-gathered parameters after each forward (less memory, one more all-gather in backward).
    reshard_after_forward: bool = True

    def data_ranks(self, world_size: int) -> int:
        return world_size // self.context_parallel

    def check_recipe(self, recipe: Any, where: str) -> list[str]:
        problems = super().check_recipe(recipe, where)
        cp = self.context_parallel
        if cp == 1:
            return problems
        for role, entry in recipe.networks.items():
            spec = entry.spec
            if not spec.has(CONTEXT_PARALLEL):
                problems.append(
                    f"context_parallel {cp}: network networks.{role} ({spec.name}) does not support context "
                    "parallel (it does not split its token sequence); use context_parallel: 1"
                )
                continue
            try:
                heads = attention_heads(spec.config)
            except Exception:  # e.g. a weights folder not there yet: building the network reports it
                heads = None
            if heads is not None and heads % cp:
                problems.append(
                    f"context_parallel {cp} does not divide the {heads} attention heads of networks.{role} "
                    f"({spec.name}): Ulysses gives every rank heads/context_parallel heads"
                )
        return problems


class Fsdp2(Strategy):
    """FSDP2 (fully_shard over a DeviceMesh), hybrid sharding, mixed precision and Ulysses context parallel."""

    shards_parameters = True
    sharded_checkpoints = True

    def __init__(self, config: Fsdp2Config) -> None:
        super().__init__(config.activation_checkpointing, config.gradient_accumulation)
        self.config = config
        self.fsdp_mesh: DeviceMesh | None = None
        self.sequence_parallel: UlyssesSequenceParallel | None = None
        self.mp_policy = MixedPrecisionPolicy()

    def setup(self, device: torch.device, precision: str) -> torch.device:
        super().setup(device, precision)
        c = self.config
        world = self.world_size
        fixed = c.replicate * c.context_parallel
        shard = c.shard if c.shard is not None else world // fixed
        if shard < 1 or c.replicate * shard * c.context_parallel != world:
            raise UserError(
                f"parallel (fsdp2): replicate {c.replicate} × shard {c.shard if c.shard else shard} × "
                f"context_parallel {c.context_parallel} must equal the number of processes, {world}"
            )
        dev = self.device.type
        # Rank = (r·shard + s)·cp + c in both meshes: context-parallel ranks are neighbours (fast links).
        grid = init_device_mesh(
            dev, (c.replicate, shard, c.context_parallel), mesh_dim_names=("replicate", "shard", "cp")
        )
        if c.replicate > 1:
            self.fsdp_mesh = init_device_mesh(
                dev, (c.replicate, shard * c.context_parallel), mesh_dim_names=("replicate", "shard_cp")
            )
        else:
            self.fsdp_mesh = init_device_mesh(dev, (shard * c.context_parallel,), mesh_dim_names=("shard_cp",))
        coords = grid.get_coordinate()
        assert coords is not None
        r, s, _ = coords
        self.data_rank, self.data_size = r * shard + s, c.replicate * shard
        self.context_size = c.context_parallel
        if c.context_parallel > 1:
            self.sequence_parallel = UlyssesSequenceParallel(grid.get_group("cp"))
        cast = c.param_dtype == "bf16" or (c.param_dtype == "auto" and precision == "bf16")
        if cast:
            self.mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        self.shard_size = shard
        return self.device

    def wrap(self, role: str, net: nn.Module, *, trained: bool, copy_from: nn.Module | None = None) -> nn.Module:
        assert self.fsdp_mesh is not None, "setup() first"
        if trained:
            apply_activation_checkpointing(net, self.activation_checkpointing)
        if self.sequence_parallel is not None:
            if not hasattr(net, "sequence_parallel"):
                raise UserError(f"networks.{role} ({type(net).__name__}) does not support context parallel")
            net.sequence_parallel = self.sequence_parallel  # type: ignore[assignment]
        options: dict[str, Any] = {
            "mesh": self.fsdp_mesh,
            "mp_policy": self.mp_policy,
            "reshard_after_forward": self.config.reshard_after_forward,
        }
        for block in blocks_of(net):
            fully_shard(block, **options)
        fully_shard(net, **options)
        if copy_from is not None:
            _fill_from(net, copy_from, self.device, role)
        return net

    def gradient_sync(self, net: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if isinstance(net, FSDPModule):
            # Without sync the unsharded gradients accumulate locally; the last micro-batch reduces them.
            net.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "replicate": self.config.replicate, "shard": self.shard_size}


def _fill_from(net: nn.Module, parent: nn.Module, device: torch.device, role: str) -> None:
    """Materialise a sharded meta-device ``net`` with the local shards of ``parent`` (same architecture)."""
    net.to_empty(device=device)
    own = net.state_dict(keep_vars=True)
    theirs = parent.state_dict(keep_vars=True)
    if list(own) != list(theirs):
        raise UserError(f"networks.{role}.init_from: the parent network has different tensors")
    with torch.no_grad():
        for key, value in own.items():
            source = theirs[key]
            if isinstance(value, DTensor):
                if not isinstance(source, DTensor) or value.placements != source.placements:
                    raise UserError(f"networks.{role}.init_from: {key} is sharded differently in the parent")
                value.to_local().copy_(source.to_local())
            else:
                value.copy_(source.to(value.dtype))


def fsdp2(config: Fsdp2Config) -> Fsdp2:
    """FSDP2 sharding over a DeviceMesh (hybrid, mixed precision, Ulysses context parallel)."""
    return Fsdp2(config)


COMPONENT = rr.Component(kind="parallel", name="fsdp2", factory=fsdp2, config=Fsdp2Config)
