"""SamplerContract: a correct sampler passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor

from rcm_registry.engine.context import SampleContext
from rcm_registry.testing import SamplerContract


class OneStep:
    """A correct sampler: x0 = net(ε, π/2) through the teacher wrapper, without a graph."""

    def noise(self, ctx: SampleContext) -> Tensor:
        return ctx.randn()

    def denoise(self, ctx: SampleContext) -> Tensor:
        x = self.noise(ctx)
        t = torch.full((x.shape[0],), math.pi / 2, dtype=torch.float64)
        return ctx.teacher.denoise(ctx.net, x, t, ctx.condition)[0]

    def __call__(self, ctx: SampleContext) -> Tensor:
        with torch.no_grad():
            x = self.denoise(ctx)
        ctx.report_step()
        return x


class DropsASample(OneStep):
    def __call__(self, ctx: SampleContext) -> Tensor:
        return super().__call__(ctx)[1:]


class GlobalNoise(OneStep):
    def noise(self, ctx: SampleContext) -> Tensor:
        return torch.randn(ctx.shape, dtype=ctx.dtype)


class FixedNoise(OneStep):
    def noise(self, ctx: SampleContext) -> Tensor:
        return torch.ones(ctx.shape, dtype=ctx.dtype)


class WithAGraph(OneStep):
    def __call__(self, ctx: SampleContext) -> Tensor:
        x = self.denoise(ctx)
        ctx.report_step()
        return x


class Silent(OneStep):
    """Never reports its step."""

    def __call__(self, ctx: SampleContext) -> Tensor:
        with torch.no_grad():
            return self.denoise(ctx)


class ReportsTwice(OneStep):
    def __call__(self, ctx: SampleContext) -> Tensor:
        ctx.report_step()
        return super().__call__(ctx)


class RelabelsInPlace(OneStep):
    """Asks for class 0 by overwriting the caller's labels."""

    def __call__(self, ctx: SampleContext) -> Tensor:
        ctx.condition["label"].zero_()
        return super().__call__(ctx)


BROKEN: list[tuple[type[OneStep], set[str]]] = [
    (DropsASample, {"test_samples_of_the_context_shape_and_dtype"}),
    (GlobalNoise, {"test_seeded_by_the_context_generator_only"}),
    (FixedNoise, {"test_seeded_by_the_context_generator_only"}),
    (WithAGraph, {"test_builds_no_graph"}),
    (Silent, {"test_reports_its_steps"}),
    (ReportsTwice, {"test_reports_its_steps"}),
    (RelabelsInPlace, {"test_leaves_the_condition_alone"}),
]


def checks(sampler: type[OneStep]) -> set[str]:
    def make(self: object, **overrides: Any) -> OneStep:
        return sampler()

    return failing_checks(SamplerContract, make=make)


def test_a_correct_sampler_passes() -> None:
    assert checks(OneStep) == set()


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_sampler_fails_its_checks(broken: type[OneStep], fails: set[str]) -> None:
    assert checks(broken) == fails


def test_every_check_fails_for_some_broken_sampler() -> None:
    assert set().union(*(fails for _, fails in BROKEN)) == checks_of(SamplerContract)
