"""``single``: one process; activation checkpointing and gradient accumulation still apply."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.parallel._base import CommonConfig, Strategy
from rcm_plugins.parallel.activation_checkpointing import apply_activation_checkpointing
from torch import nn

import rcm_registry as rr
from rcm_registry import distributed
from rcm_registry.errors import UserError


@attrs.define(kw_only=True)
class SingleConfig(CommonConfig):
    """``parallel: {use: single, activation_checkpointing: block, gradient_accumulation: 4}``"""


class Single(Strategy):
    """One process, no communication (activation checkpointing and gradient accumulation)."""

    def __init__(self, config: SingleConfig) -> None:
        super().__init__(config.activation_checkpointing, config.gradient_accumulation)
        self.config = config

    def setup(self, device: torch.device, precision: str) -> torch.device:
        env = distributed.launch_env()
        if env.distributed:
            raise UserError(
                f"parallel: single runs one process, but torchrun started {env.world_size}: use "
                "`parallel: {use: ddp}` or `parallel: {use: fsdp2}`"
            )
        self.device, self.precision = device, precision
        return device

    def wrap(self, role: str, net: nn.Module, *, trained: bool, copy_from: nn.Module | None = None) -> nn.Module:
        if trained:
            apply_activation_checkpointing(net, self.activation_checkpointing)
        return net


def single(config: SingleConfig) -> Single:
    """One process (activation checkpointing and gradient accumulation only)."""
    return Single(config)


COMPONENT = rr.Component(kind="parallel", name="single", factory=single, config=SingleConfig)
