"""``ddp``: every rank holds whole networks and a slice of the batch; gradients are all-reduced.

Trained networks are wrapped in ``DistributedDataParallel`` (gradient buckets all-reduced while the
backward pass runs); frozen ones (the teacher) are plain replicas. Checkpoints are written by rank 0
in the single-process format, so a DDP run resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
from rcm_plugins.parallel._base import CommonConfig, Strategy
from rcm_plugins.parallel.activation_checkpointing import apply_activation_checkpointing
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rcm_registry as rr
from rcm_registry import schema


@attrs.define(kw_only=True)
class DdpConfig(CommonConfig):
    """``parallel: {use: ddp, gradient_accumulation: 2}``"""

    #: Size of the gradient buckets all-reduced during the backward pass.
    bucket_cap_mb: float = attrs.field(default=25.0, validator=schema.positive)


class Ddp(Strategy):
    """Data parallel with torch DistributedDataParallel (whole networks on every rank)."""

    def __init__(self, config: DdpConfig) -> None:
        super().__init__(config.activation_checkpointing, config.gradient_accumulation)
        self.config = config

    def wrap(self, role: str, net: nn.Module, *, trained: bool, copy_from: nn.Module | None = None) -> nn.Module:
        if not trained or self.world_size == 1:
            if trained:
                apply_activation_checkpointing(net, self.activation_checkpointing)
            return net
        apply_activation_checkpointing(net, self.activation_checkpointing)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids, bucket_cap_mb=self.config.bucket_cap_mb)

    def unwrap(self, net: nn.Module) -> nn.Module:
        return net.module if isinstance(net, DistributedDataParallel) else net

    def gradient_sync(self, net: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if enabled or not isinstance(net, DistributedDataParallel):
            return contextlib.nullcontext()
        return net.no_sync()


def ddp(config: DdpConfig) -> Ddp:
    """Data parallel (torch DDP): whole networks on every rank, gradients all-reduced."""
    return Ddp(config)


COMPONENT = rr.Component(kind="parallel", name="ddp", factory=ddp, config=DdpConfig)
