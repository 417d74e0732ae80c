"""``dmd``: distribution matching distillation (reverse KL) of the student's few-step samples.

* ``x̂0 = ctx.rollout(ctx, grad=True)``: the student's sample, differentiable through its last call;
* ``t ~ p_D`` (``time.critic``), ``ε ~ N(0, I)``, ``x_t = cos t·x̂0 + sin t·ε`` (x̂0 detached here:
  the scores below are constants);
* without grad: ``x0_fake`` from the fake-score network (no CFG) and ``x0_teacher`` from the teacher
  with CFG, both through the teacher wrapper;
* ``w = mean|x̂0 − x0_teacher|`` per sample (over elements), at least ``min_weight``, in float64;
* ``L = ‖x̂0 − sg(x̂0 − (x0_fake − x0_teacher)/w)‖²`` summed over elements, so that
  ``∂L/∂x̂0 = 2·(x0_fake − x0_teacher)/w``.

Non-finite samples are dropped and counted (``nan_masked``; with all of them dropped, e.g. a fake score
gone non-finite, the loss is NaN); ``reduction`` over the batch; times ``weight``. Randomness, in
order: the rollout's, then ``t`` from the time sampler, then ``ε``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.distill.common import (
    Reduction,
    draw_times,
    expand,
    finite_rows,
    guidance_for,
    need_teacher,
    per_sample_sum,
    reduce_batch,
)
from rcm_plugins.distill.requirements import (
    ROLLOUT_FIX,
    TEACHER_FIX,
    Requirements,
    network_fix,
    time_fix,
)

import rcm_registry as rr
from rcm_registry import schema as s
from rcm_registry.protocols import LossOutput


@attrs.define
class DmdConfig:
    weight: float = attrs.field(default=1.0, validator=s.non_negative)
    reduction: Reduction = "mean"
    #: Lower bound of the per-sample normaliser w.
    min_weight: float = attrs.field(default=1.0e-5, validator=s.positive)
    #: CFG scale of the teacher score (default: the teacher wrapper's ``guidance``).
    guidance: float | None = attrs.field(default=None, validator=s.guidance_scale)
    student_net: str = "student"
    teacher_net: str = "teacher"
    fake_net: str = "fake_score"
    time_sampler: str = "critic"

    def requirements(self) -> Requirements:
        roles = dict.fromkeys((self.teacher_net, self.student_net, self.fake_net), ())
        return Requirements(
            who="dmd",
            trains=self.student_net,
            networks=roles,
            time=(self.time_sampler,),
            rollout=True,
            trained_elsewhere=(self.fake_net,),
            fixes={
                **{f"network:{r}": network_fix(r) for r in roles},
                f"time:{self.time_sampler}": time_fix(self.time_sampler),
                "rollout": ROLLOUT_FIX,
                "teacher_wrapper": TEACHER_FIX,
                f"trained:{self.fake_net}": (
                    f"add a critic phase `{{trains: {self.fake_net}, losses: [{{use: fake_score_dsm}}], ...}}`"
                ),
            },
        )

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        return self.requirements().check_recipe(recipe, phase)


class DmdLoss:
    """DMD: reverse-KL score distillation of rollout samples against teacher and fake score."""

    def __init__(self, config: DmdConfig) -> None:
        self.config = config

    def __call__(self, ctx: Any) -> LossOutput:
        cfg = self.config
        wrapper = need_teacher(ctx, "dmd")
        teacher, fake = ctx.net(cfg.teacher_net), ctx.net(cfg.fake_net)
        if ctx.rollout is None:
            raise RuntimeError(f"dmd needs a rollout to generate student samples: {ROLLOUT_FIX}")
        cond = ctx.batch.condition
        x_hat = ctx.rollout(ctx, grad=True)
        t = draw_times(ctx, cfg.time_sampler, x_hat.shape[0], x_hat, "dmd")
        eps = ctx.randn_like(x_hat)
        w_cfg, null = guidance_for(ctx, cfg.guidance, "dmd")
        x_hat64 = x_hat.to(torch.float64)
        with torch.no_grad():
            tt = expand(t, x_hat)
            x_t = (torch.cos(tt) * x_hat64.detach() + torch.sin(tt) * eps.to(torch.float64)).to(x_hat.dtype)
            x0_fake = wrapper.denoise(fake, x_t, t, cond)[0].to(torch.float64)
            x0_teacher = wrapper.denoise(teacher, x_t, t, cond, guidance=w_cfg, null_condition=null)[0]
            x0_teacher = x0_teacher.to(torch.float64)
            norm = (x_hat64.detach() - x0_teacher).abs().reshape(x_hat.shape[0], -1).mean(dim=1)
            norm = norm.clamp(min=cfg.min_weight)
            direction = (x0_fake - x0_teacher) / expand(norm, x_hat)
            ok = finite_rows(direction, x_hat64.detach())
            target = torch.where(expand(ok, x_hat64), x_hat64.detach() - direction, x_hat64.detach())
        x_hat_safe = torch.where(expand(ok, x_hat64), x_hat64, x_hat64.detach())
        per = per_sample_sum((x_hat_safe - target) ** 2)
        loss, masked = reduce_batch(per, ok, cfg.reduction)
        n_ok = max(int(ok.sum()), 1)
        metrics = {
            "nan_masked": float(masked),
            "unweighted": float(loss.detach()),
            "dmd_norm": float(norm[ok].sum() / n_ok),
        }
        return LossOutput(loss=cfg.weight * loss, metrics=metrics)


COMPONENT = rr.Component(kind="loss", name="dmd", factory=DmdLoss, config=DmdConfig)
