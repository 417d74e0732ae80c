"""LossContract: a correct loss passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor

from rcm_registry.engine.context import StepContext
from rcm_registry.protocols import LossOutput
from rcm_registry.testing import LossContract


@attrs.define
class DenoiseConfig:
    reduction: str = "mean"


class Denoise:
    """A correct loss: the student denoises x_t = cos t·x0 + sin t·ε, ‖x0_θ − x0‖² per sample, reduced."""

    def __init__(self, config: DenoiseConfig) -> None:
        self.config = config

    def noise(self, ctx: StepContext, x0: Tensor) -> Tensor:
        return ctx.randn_like(x0)

    def prediction(self, ctx: StepContext, x_t: Tensor, t: Tensor) -> Tensor:
        return ctx.teacher.denoise(ctx.net(ctx.trained), x_t, t, ctx.batch.condition)[0]

    def reduce(self, per_sample: Tensor) -> Tensor:
        return per_sample.sum() if self.config.reduction == "sum" else per_sample.mean()

    def __call__(self, ctx: StepContext) -> LossOutput:
        x0 = ctx.batch.x0
        t = ctx.sample_times(ctx.time["critic"], x0.shape[0])
        s, c = torch.sin(t)[:, None], torch.cos(t)[:, None]
        x_t = c * x0 + s * self.noise(ctx, x0)
        per_sample = (self.prediction(ctx, x_t, t) - x0).square().sum(dim=1)
        return LossOutput(loss=self.reduce(per_sample), metrics={"t_mean": float(t.mean())})


class PerSampleLoss(Denoise):
    """Returns the per-sample losses, not a scalar."""

    def reduce(self, per_sample: Tensor) -> Tensor:
        return per_sample


class TensorMetric(Denoise):
    def __call__(self, ctx: StepContext) -> LossOutput:
        out = super().__call__(ctx)
        return LossOutput(loss=out.loss, metrics={"loss": out.loss.detach()})


class ThroughTheTeacher(Denoise):
    """Regresses onto the teacher without stopping its gradient."""

    def prediction(self, ctx: StepContext, x_t: Tensor, t: Tensor) -> Tensor:
        mine = super().prediction(ctx, x_t, t)
        theirs = ctx.teacher.denoise(ctx.net("teacher"), x_t, t, ctx.batch.condition)[0]
        return mine - theirs + ctx.batch.x0


class Detached(Denoise):
    """The student's prediction is detached: nothing to train."""

    def prediction(self, ctx: StepContext, x_t: Tensor, t: Tensor) -> Tensor:
        return super().prediction(ctx, x_t, t).detach() + 0.0 * sum(p.sum() for p in ctx.net("teacher").parameters())


class GlobalNoise(Denoise):
    def noise(self, ctx: StepContext, x0: Tensor) -> Tensor:
        return torch.randn(x0.shape, dtype=x0.dtype)


class LocalNoise(Denoise):
    """Draws ε for the local batch from the step generator: ranks draw the same ε for different rows."""

    def noise(self, ctx: StepContext, x0: Tensor) -> Tensor:
        return torch.randn(x0.shape, generator=ctx.generator, dtype=x0.dtype)


class SumForMean(Denoise):
    """Always sums, whatever config.reduction says."""

    def reduce(self, per_sample: Tensor) -> Tensor:
        return per_sample.sum()


def maker(loss: type[Denoise], **defaults: Any) -> Any:
    def make(self: object, **overrides: Any) -> Denoise:
        return loss(DenoiseConfig(**{**defaults, **overrides}))

    return make


RANKS = "test_ranks_losses_add_up_to_the_whole_batch"
GRADIENT = "test_gradient_reaches_the_trained_network_only"
BROKEN: list[tuple[str, Any, set[str]]] = [
    ("per_sample", maker(PerSampleLoss), {"test_returns_a_finite_scalar_and_float_metrics", GRADIENT, RANKS}),
    ("tensor_metric", maker(TensorMetric), {"test_returns_a_finite_scalar_and_float_metrics"}),
    ("through_the_teacher", maker(ThroughTheTeacher), {GRADIENT}),
    ("detached", maker(Detached), {GRADIENT}),
    ("global_noise", maker(GlobalNoise), {"test_same_seed_same_loss_whatever_the_global_rng", RANKS}),
    ("local_noise", maker(LocalNoise), {RANKS}),
    ("sum_for_mean", maker(SumForMean), {RANKS}),
    ("unknown_reduction", maker(Denoise, reduction="max"), {RANKS}),
]


def test_a_correct_loss_passes() -> None:
    assert failing_checks(LossContract, make=maker(Denoise)) == set()


@pytest.mark.parametrize(("make", "fails"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_loss_fails_its_checks(make: Any, fails: set[str]) -> None:
    assert failing_checks(LossContract, make=make) == fails


def test_every_check_fails_for_some_broken_loss() -> None:
    assert set().union(*(fails for *_, fails in BROKEN)) == checks_of(LossContract)
