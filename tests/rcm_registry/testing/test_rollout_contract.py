"""RolloutContract: a correct rollout passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor

from rcm_registry.engine.context import StepContext
from rcm_registry.testing import RolloutContract


class OneStep:
    """A correct rollout: x̂0 = student(ε, π/2) through the teacher wrapper, with a graph only when asked."""

    def noise(self, ctx: StepContext) -> Tensor:
        return ctx.randn_like(ctx.batch.x0)

    def __call__(self, ctx: StepContext, *, grad: bool) -> Tensor:
        x = self.noise(ctx)
        t = torch.full((x.shape[0],), math.pi / 2, dtype=torch.float64)
        with torch.set_grad_enabled(grad):
            return ctx.teacher.denoise(ctx.net("student"), x, t, ctx.batch.condition)[0]


class Float32(OneStep):
    def __call__(self, ctx: StepContext, *, grad: bool) -> Tensor:
        return super().__call__(ctx, grad=grad).float()


class AlwaysAGraph(OneStep):
    def __call__(self, ctx: StepContext, *, grad: bool) -> Tensor:
        return super().__call__(ctx, grad=True)


class ThroughTheFakeScore(OneStep):
    """Refines x̂0 with the fake-score network, keeping its graph."""

    def __call__(self, ctx: StepContext, *, grad: bool) -> Tensor:
        x0 = super().__call__(ctx, grad=grad)
        t = torch.full((x0.shape[0],), 0.3, dtype=torch.float64)
        with torch.set_grad_enabled(grad):
            return ctx.teacher.denoise(ctx.net("fake_score"), x0, t, ctx.batch.condition)[0]


class GlobalNoise(OneStep):
    def noise(self, ctx: StepContext) -> Tensor:
        return torch.randn(ctx.batch.x0.shape, dtype=ctx.batch.x0.dtype)


class LocalNoise(OneStep):
    def noise(self, ctx: StepContext) -> Tensor:
        return torch.randn(ctx.batch.x0.shape, generator=ctx.generator, dtype=ctx.batch.x0.dtype)


class FixedNoise(OneStep):
    """Starts every sample from the same noise, whatever the generator."""

    def noise(self, ctx: StepContext) -> Tensor:
        return torch.ones_like(ctx.batch.x0)


SEEDED = "test_seeded_by_the_step_generator_only"
BROKEN: list[tuple[type[OneStep], set[str]]] = [
    (Float32, {"test_shaped_like_the_batch"}),
    (AlwaysAGraph, {"test_gradient_only_when_asked"}),
    (ThroughTheFakeScore, {"test_gradient_only_when_asked"}),
    (GlobalNoise, {SEEDED, "test_each_rank_gets_its_rows_of_the_whole_batch"}),
    (LocalNoise, {"test_each_rank_gets_its_rows_of_the_whole_batch"}),
    (FixedNoise, {SEEDED}),
]


def checks(rollout: type[OneStep]) -> set[str]:
    def make(self: object, **overrides: Any) -> OneStep:
        return rollout()

    return failing_checks(RolloutContract, make=make)


def test_a_correct_rollout_passes() -> None:
    assert checks(OneStep) == set()


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_rollout_fails_its_checks(broken: type[OneStep], fails: set[str]) -> None:
    assert checks(broken) == fails


def test_every_check_fails_for_some_broken_rollout() -> None:
    assert set().union(*(fails for _, fails in BROKEN)) == checks_of(RolloutContract)
