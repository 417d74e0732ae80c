"""``dcm``: discrete-time consistency distillation along the teacher's PF-ODE (Euler steps).

Grid: ``N + 1`` TrigFlow times built in rectified-flow time ``u = sin t/(cos t + sin t)``:
``u_k = s_max·shift·(k/N)/(1 + (shift − 1)·(k/N))`` for k = 0..N, ``t_k = atan2(u_k, 1 − u_k)``, with
``s_max = σ_max/(1 + σ_max)`` (``sigma_max: null`` gives s_max = 1, t_N = π/2). ``shift > 1`` puts
more points at high noise, as the flow-matching time shift does. t_0 = 0.

Per sample: k uniform in {1..N}, ``t = t_k``, ``t' = t_{k−1}``, ``x_t = cos t·x0 + sin t·ε``;
one Euler step of the teacher ODE ``dx/dt = F_T`` (with CFG, no grad): ``x_{t'} = x_t − (t − t')·F_T``;
target ``x0⁻ = x0`` prediction of ``target_net`` (the student itself by default, or an EMA copy the
engine provides as a role) at ``(x_{t'}, t')`` without grad, except at t' = 0 where the boundary
condition gives ``x0⁻ = x_{t'}`` exactly. ``L = ‖x0_θ(x_t, t) − x0⁻‖²`` summed over elements,
non-finite samples masked (``nan_masked``; all of them: NaN), ``reduction`` over the batch, times ``weight``.
A non-finite x_t is replaced by zeros before the trained network sees it, so a masked sample leaves
the gradients finite (:func:`~rcm_plugins.distill.common.finite_input`).

Randomness, in order: k (``ctx.generator``), then ε (``ctx.generator``).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.core._time import shift_rf
from rcm_plugins.distill.common import (
    Reduction,
    expand,
    finite_input,
    finite_rows,
    guidance_for,
    need_teacher,
    per_sample_sum,
    reduce_batch,
)
from rcm_plugins.distill.requirements import TEACHER_FIX, Requirements, network_fix
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s
from rcm_registry.protocols import LossOutput


@attrs.define
class DcmConfig:
    weight: float = attrs.field(default=1.0, validator=s.non_negative)
    reduction: Reduction = "mean"
    #: Number of intervals N of the grid.
    steps: int = attrs.field(default=32, validator=s.positive)
    #: Time shift of the grid (1: uniform in u).
    shift: float = attrs.field(default=1.0, validator=s.positive)
    #: Top of the grid, t_N = arctan(sigma_max) (null: π/2).
    sigma_max: float | None = attrs.field(default=80.0, validator=s.positive)
    #: CFG scale of the teacher ODE (default: the teacher wrapper's ``guidance``).
    guidance: float | None = attrs.field(default=None, validator=s.guidance_scale)
    student_net: str = "student"
    teacher_net: str = "teacher"
    #: Network giving the target at the earlier grid point (no grad).
    target_net: str = "student"

    def requirements(self) -> Requirements:
        roles = dict.fromkeys((self.teacher_net, self.student_net, self.target_net), ())
        return Requirements(
            who="dcm",
            trains=self.student_net,
            networks=roles,
            fixes={**{f"network:{r}": network_fix(r) for r in roles}, "teacher_wrapper": TEACHER_FIX},
        )

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        return self.requirements().check_recipe(recipe, phase)


def consistency_grid(steps: int, shift: float, sigma_max: float | None) -> Tensor:
    """The N + 1 increasing TrigFlow times t_0 = 0 < ... < t_N of the dCM grid (float64)."""
    s_max = 1.0 if sigma_max is None else sigma_max / (1.0 + sigma_max)
    u = shift_rf(torch.arange(steps + 1, dtype=torch.float64) / steps, shift, scale=s_max)
    return torch.atan2(u, 1.0 - u)


class DcmLoss:
    """dCM: discrete consistency between adjacent points of a shifted grid along the teacher ODE."""

    def __init__(self, config: DcmConfig) -> None:
        self.config = config
        self.grid = consistency_grid(config.steps, config.shift, config.sigma_max)

    def __call__(self, ctx: Any) -> LossOutput:
        cfg = self.config
        wrapper = need_teacher(ctx, "dcm")
        student, teacher, target = ctx.net(cfg.student_net), ctx.net(cfg.teacher_net), ctx.net(cfg.target_net)
        x0, cond = ctx.batch.x0, ctx.batch.condition
        n = x0.shape[0]
        k = ctx.randint(1, cfg.steps + 1, n).to(x0.device)
        grid = self.grid.to(x0.device)
        t, t_prev = grid[k], grid[k - 1]
        eps = ctx.randn_like(x0)
        c, s_ = torch.cos(expand(t, x0)), torch.sin(expand(t, x0))
        x_t, ok_in = finite_input((c * x0.to(torch.float64) + s_ * eps.to(torch.float64)).to(x0.dtype))
        w, null = guidance_for(ctx, cfg.guidance, "dcm")
        with torch.no_grad():
            F_T = wrapper.denoise(teacher, x_t, t, cond, guidance=w, null_condition=null)[1].to(torch.float64)
            x_prev = x_t.to(torch.float64) - expand(t - t_prev, x0) * F_T
            at_zero = t_prev <= 0
            # The network is not evaluated at t' = 0 (some parameterisations have ln σ there).
            t_eval = torch.where(at_zero, grid[1].expand_as(t_prev), t_prev)
            x0_target = wrapper.denoise(target, x_prev.to(x0.dtype), t_eval, cond)[0].to(torch.float64)
            x0_target = torch.where(expand(at_zero, x0), x_prev, x0_target)
        x0_theta = wrapper.denoise(student, x_t, t, cond)[0].to(torch.float64)
        ok = finite_rows(x0_target, x0_theta.detach()) & ok_in
        keep = expand(ok, x0_theta)
        diff = torch.where(keep, x0_theta - x0_target, torch.zeros_like(x0_theta))
        per = per_sample_sum(diff**2)
        loss, masked = reduce_batch(per, ok, cfg.reduction)
        metrics = {"nan_masked": float(masked), "unweighted": float(loss.detach())}
        return LossOutput(loss=cfg.weight * loss, metrics=metrics)


COMPONENT = rr.Component(kind="loss", name="dcm", factory=DcmLoss, config=DcmConfig)
