"""What every parallel strategy shares: ranks, data slices, reductions, and the config fields they all take."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import attrs
import torch
import torch.distributed as dist
from rcm_plugins.parallel.activation_checkpointing import Mode
from torch import Tensor, nn

from rcm_registry import distributed, schema
from rcm_registry.errors import UserError

ACTIVATION_CHECKPOINTING = ("none", "block", "matmul")


@attrs.define(kw_only=True)
class CommonConfig:
    #: Recompute activations in the backward pass: ``none``, ``block`` (whole transformer blocks) or
    #: ``matmul`` (keep matmul and attention outputs, recompute the elementwise ops around them).
    activation_checkpointing: Literal["none", "block", "matmul"] = attrs.field(
        default="none", validator=attrs.validators.in_(ACTIVATION_CHECKPOINTING)
    )
    #: Micro-batches per optimiser step: ``run.batch_size`` is the global batch of one optimiser step,
    #: split over data-parallel ranks and then into this many micro-batches, with the gradients summed.
    gradient_accumulation: int = attrs.field(default=1, validator=schema.positive)

    def data_ranks(self, world_size: int) -> int:
        """Ranks that see different samples, of ``world_size`` processes."""
        return world_size

    def check_recipe(self, recipe: Any, where: str) -> list[str]:
        """``run.batch_size`` splits into equal slices: data-parallel ranks (of the processes torchrun
        started, one without it) × micro-batches (what :meth:`Strategy.check_batch` checks once running)."""
        batch = recipe.body.run.batch_size
        ranks = max(1, self.data_ranks(distributed.launch_env().world_size))
        slices = ranks * self.gradient_accumulation
        if batch % slices:
            return [
                f"run.batch_size {batch} is not divisible by the {ranks} data-parallel ranks × "
                f"{self.gradient_accumulation} gradient_accumulation micro-batches = {slices} slices of the batch"
            ]
        return []


class Strategy:
    """Base of the parallel strategies (the ``parallel`` protocol in :mod:`rcm_registry.protocols`)."""

    #: Parameters are sharded across ranks (networks initialised from another role are built on the meta
    #: device and filled shard by shard).
    shards_parameters = False
    #: Checkpoints are written by every rank through torch.distributed.checkpoint.
    sharded_checkpoints = False

    def __init__(self, activation_checkpointing: Mode = "none", gradient_accumulation: int = 1) -> None:
        self.activation_checkpointing: Mode = activation_checkpointing
        self.accumulation = gradient_accumulation
        self.rank = 0
        self.world_size = 1
        self.data_rank = 0
        self.data_size = 1
        self.context_size = 1
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def setup(self, device: torch.device, precision: str) -> torch.device:
        """Join the process group (from the torchrun environment) and work out this rank's place."""
        distributed.init_process_group(device)
        self.device = distributed.local_device(device)
        self.precision = precision
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.data_rank, self.data_size = self.rank, self.world_size
        return self.device

    def check_batch(self, batch_size: int) -> None:
        slices = self.data_size * self.accumulation
        if batch_size % slices:
            raise UserError(
                f"run.batch_size {batch_size} is not divisible by the {self.data_size} data-parallel ranks × "
                f"{self.accumulation} accumulation steps = {slices} slices of the batch"
            )

    def wrap(self, role: str, net: nn.Module, *, trained: bool, copy_from: nn.Module | None = None) -> nn.Module:
        return net

    def unwrap(self, net: nn.Module) -> nn.Module:
        return net

    def gradient_sync(self, net: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(x)
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "data_parallel": self.data_size,
            "context_parallel": self.context_size,
            "accumulation": self.accumulation,
            "activation_checkpointing": self.activation_checkpointing,
        }
