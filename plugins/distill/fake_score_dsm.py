"""``fake_score_dsm``: denoising score matching of the fake-score (critic) network on student samples.

``x̂0 = ctx.rollout(ctx, grad=False)`` (no gradient to the student), ``t ~ p_D`` (``time.critic``),
``ε ~ N(0, I)``, ``x_t = cos t·x̂0 + sin t·ε``; ``x0_fake`` from the fake-score network through the
teacher wrapper (no CFG); ``L = ‖x̂0 − x0_fake‖²/sin²t`` summed over elements (``1/sin²t`` turns the
x0 error into the F error: ``F − F_true = −(x0 − x0_true)/sin t`` at fixed x_t), non-finite samples
masked (``nan_masked``; all of them: NaN), ``reduction`` over the batch, times ``weight``. Trains
``fake_net``.
A non-finite x_t is replaced by zeros before the trained network sees it, so a masked sample leaves
the gradients finite (:func:`~rcm_plugins.distill.common.finite_input`).

Randomness, in order: the rollout's, then ``t`` from the time sampler, then ``ε``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.distill.common import (
    Reduction,
    draw_times,
    expand,
    finite_input,
    finite_rows,
    need_teacher,
    per_sample_sum,
    reduce_batch,
)
from rcm_plugins.distill.requirements import ROLLOUT_FIX, TEACHER_FIX, Requirements, network_fix, time_fix

import rcm_registry as rr
from rcm_registry import schema as s
from rcm_registry.protocols import LossOutput


@attrs.define
class FakeScoreDsmConfig:
    weight: float = attrs.field(default=1.0, validator=s.non_negative)
    reduction: Reduction = "mean"
    fake_net: str = "fake_score"
    time_sampler: str = "critic"

    def requirements(self) -> Requirements:
        return Requirements(
            who="fake_score_dsm",
            trains=self.fake_net,
            networks={self.fake_net: ()},
            time=(self.time_sampler,),
            rollout=True,
            fixes={
                f"network:{self.fake_net}": network_fix(self.fake_net),
                f"time:{self.time_sampler}": time_fix(self.time_sampler),
                "rollout": ROLLOUT_FIX,
                "teacher_wrapper": TEACHER_FIX,
            },
        )

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        return self.requirements().check_recipe(recipe, phase)


class FakeScoreDsmLoss:
    """Critic loss: the fake score learns to denoise the student's samples (x0 error / sin²t)."""

    def __init__(self, config: FakeScoreDsmConfig) -> None:
        self.config = config

    def __call__(self, ctx: Any) -> LossOutput:
        cfg = self.config
        wrapper = need_teacher(ctx, "fake_score_dsm")
        fake = ctx.net(cfg.fake_net)
        if ctx.rollout is None:
            raise RuntimeError(f"fake_score_dsm needs a rollout to generate student samples: {ROLLOUT_FIX}")
        cond = ctx.batch.condition
        with torch.no_grad():
            x_hat = ctx.rollout(ctx, grad=False).detach()
        t = draw_times(ctx, cfg.time_sampler, x_hat.shape[0], x_hat, "fake_score_dsm")
        eps = ctx.randn_like(x_hat)
        tt = expand(t, x_hat)
        x_hat64 = x_hat.to(torch.float64)
        x_t, ok_in = finite_input((torch.cos(tt) * x_hat64 + torch.sin(tt) * eps.to(torch.float64)).to(x_hat.dtype))
        x0_fake = wrapper.denoise(fake, x_t, t, cond)[0].to(torch.float64)
        ok = finite_rows(x0_fake.detach(), x_hat64) & ok_in
        diff = torch.where(expand(ok, x_hat64), x_hat64 - x0_fake, torch.zeros_like(x_hat64))
        per = per_sample_sum(diff**2) / torch.sin(t) ** 2
        loss, masked = reduce_batch(per, ok, cfg.reduction)
        metrics = {"nan_masked": float(masked), "unweighted": float(loss.detach())}
        return LossOutput(loss=cfg.weight * loss, metrics=metrics)


COMPONENT = rr.Component(kind="loss", name="fake_score_dsm", factory=FakeScoreDsmLoss, config=FakeScoreDsmConfig)
