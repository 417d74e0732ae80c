"""What the engine hands to losses, rollouts and samplers on each call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from rcm_registry.protocols import Batch, Condition, Rollout, Schedule, Teacher, TimeSampler


@attrs.frozen
class BatchShard:
    """This process's part of a global batch: slice ``index`` of ``count`` equal slices of ``size`` samples.

    Under data parallelism every rank draws per-sample randomness for the whole batch and keeps its own
    rows, so all ranks consume their (identically seeded) generators in step and together see exactly
    the draws a single process would.
    """

    index: int
    count: int
    size: int

    @property
    def local(self) -> int:
        return self.size // self.count

    def take(self, x: Tensor) -> Tensor:
        return x.narrow(0, self.index * self.local, self.local)

    def batch(self, full: Batch) -> Batch:
        def rows(c: Condition | None) -> Condition | None:
            return None if c is None else {k: self.take(v) for k, v in c.items()}

        return Batch(
            x0=self.take(full.x0), condition=rows(full.condition) or {}, null_condition=rows(full.null_condition)
        )

    def sampler(self, inner: TimeSampler) -> TimeSampler:
        """``inner``, drawing for the global batch when asked for the local batch's times."""
        return _ShardedTimeSampler(inner, self)


class _ShardedTimeSampler:
    def __init__(self, inner: TimeSampler, shard: BatchShard) -> None:
        self.inner = inner
        self.shard = shard

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if n != self.shard.local:
            return self.inner(n, generator=generator)
        return self.shard.take(self.inner(self.shard.size, generator=generator))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


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
    #: Optimiser steps phase ``phase`` took before this one (its own count, unlike ``iteration``, which
    #: counts every phase's); restored on resume with the rest of the run's state.
    phase_step: int = 0
    schedule: Schedule | None = None
    teacher: Teacher | None = None
    time: Mapping[str, TimeSampler] = attrs.field(factory=dict)
    rollout: Rollout | None = None
    #: Under data parallelism: which rows of the global batch ``batch`` holds (None: all of them).
    #: Draws for the local batch size through :meth:`randn_like` and :meth:`rand` are then made for the
    #: global batch and sliced (``time`` samplers are wrapped the same way by the engine).
    shard: BatchShard | None = None

    def net(self, role: str) -> nn.Module:
        if role not in self.nets:
            known = ", ".join(sorted(self.nets)) or "none"
            raise KeyError(f"this recipe has no network {role!r} (networks: {known})")
        return self.nets[role]

    def randn_like(self, x: Tensor) -> Tensor:
        shard = self.shard
        if shard is not None and x.dim() > 0 and x.shape[0] == shard.local:
            full = torch.randn((shard.size, *x.shape[1:]), generator=self.generator, device=x.device, dtype=x.dtype)
            return shard.take(full)
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def sample_times(self, sampler: TimeSampler, n: int) -> Tensor:
        """``n`` times from ``sampler`` with this step's generator (the global batch's draw, sliced)."""
        if self.shard is not None:
            sampler = self.shard.sampler(sampler)
        return sampler(n, generator=self.generator)

    def randint(self, low: int, high: int, n: int) -> Tensor:
        """``n`` integers in [low, high) with this step's generator (the global batch's draw, sliced)."""
        shard = self.shard
        gen = self.generator
        if shard is not None and n == shard.local:
            return shard.take(torch.randint(low, high, (shard.size,), generator=gen, device=gen.device))
        return torch.randint(low, high, (n,), generator=gen, device=gen.device)

    def rand(self, n: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
        shard = self.shard
        if shard is not None and n == shard.local:
            return shard.take(
                torch.rand(shard.size, generator=self.generator, device=self.generator.device, dtype=dtype)
            )
        return torch.rand(n, generator=self.generator, device=self.generator.device, dtype=dtype)


@attrs.define
class SampleContext:
    """What a sampler needs: the network, how to read it, the noise shape and the condition.

    Samplers draw their noise through :meth:`randn` and call :meth:`report_step` after each step (one
    network evaluation per sample, CFG included), so a caller can fix each sample's noise and show progress
    without knowing the sampler.
    """

    net: nn.Module
    shape: tuple[int, ...]
    condition: Condition
    generator: torch.Generator
    null_condition: Condition | None = None
    schedule: Schedule | None = None
    teacher: Teacher | None = None
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    #: One generator per sample (``shape[0]`` of them, on ``device``): row i of every :meth:`randn` draw
    #: comes from ``sample_generators[i]``, so a sample's noise does not depend on the batch it is drawn in
    #: (``rcm synth`` seeds prompt i's from (seed, i)). None: whole draws from ``generator``.
    sample_generators: Sequence[torch.Generator] | None = None
    #: Called by :meth:`report_step` (e.g. to advance a progress bar); None: nobody listens.
    on_step: Callable[[], None] | None = None

    def randn(self) -> Tensor:
        gens = self.sample_generators
        if gens is None:
            return torch.randn(self.shape, generator=self.generator, device=self.device, dtype=self.dtype)
        if len(gens) != self.shape[0]:
            raise ValueError(f"{len(gens)} sample generators for a batch of {self.shape[0]}")
        rows = [torch.randn(self.shape[1:], generator=g, device=self.device, dtype=self.dtype) for g in gens]
        return torch.stack(rows)

    def report_step(self) -> None:
        """A sampler finished one step (one network evaluation of the batch, CFG included)."""
        if self.on_step is not None:
            self.on_step()
