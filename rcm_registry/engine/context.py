"""What the engine hands to losses, rollouts and samplers on each call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from rcm_registry.protocols import Batch, Condition, Rollout, Schedule, Teacher, TimeSampler


@attrs.define
class StepContext:
    """Everything one loss evaluation may use.

    ``nets`` maps network roles from the recipe (``teacher``, ``student``, ``fake_score``, ...) to live
    modules; ``trained`` names the role the current phase optimises. ``time`` maps the recipe's time
    sampler roles (``student``, ``critic``, ...) to samplers. ``generator`` is the engine's seeded RNG
    for this step, on the batch's device: draw all randomness from it so runs are reproducible.
    """

    batch: Batch
    nets: Mapping[str, nn.Module]
    trained: str
    iteration: int
    generator: torch.Generator
    phase: str = ""
    schedule: Schedule | None = None
    teacher: Teacher | None = None
    time: Mapping[str, TimeSampler] = attrs.field(factory=dict)
    rollout: Rollout | None = None
    #: Free-form per-run settings a loss may read (e.g. ``{"tangent_warmup": 1000}``).
    extras: dict[str, Any] = attrs.field(factory=dict)

    def net(self, role: str) -> nn.Module:
        if role not in self.nets:
            known = ", ".join(sorted(self.nets)) or "none"
            raise KeyError(f"this recipe has no network {role!r} (networks: {known})")
        return self.nets[role]

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def rand(self, n: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.rand(n, generator=self.generator, device=self.generator.device, dtype=dtype)


@attrs.define
class SampleContext:
    """What a sampler needs: the network, how to read it, the noise shape and the condition."""

    net: nn.Module
    shape: tuple[int, ...]
    condition: Condition
    generator: torch.Generator
    null_condition: Condition | None = None
    schedule: Schedule | None = None
    teacher: Teacher | None = None
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    def randn(self) -> Tensor:
        return torch.randn(self.shape, generator=self.generator, device=self.device, dtype=self.dtype)
