"""``scm``: continuous-time consistency distillation (sCM) with tangent normalisation and warmup.

Per sample, with ``t ~ p_G`` (``time.student``), ``ε ~ N(0, I)`` and ``x_t = cos t·x0 + sin t·ε``:

* teacher target with CFG (no grad): ``F_T = F_u + w·(F_c − F_u)``;
* tangent of the student's F along the PF-ODE, ``dx_t/dt = cos t·sin t·F_T`` and ``dt = cos t·sin t``
  (the ``cos t·sin t`` factor of the sCM rearrangement keeps the tangent bounded):
  ``dF_θ⁻ = ∂F_θ⁻/∂x_t·dx_t/dt + ∂F_θ⁻/∂t·dt`` by forward-mode AD (:func:`rcm_registry.jvp.jvp`), no grad;
* with ``r = min(1, iteration/tangent_warmup)`` (1 when tangent_warmup = 0), one of two placements of
  r (``warmup_scales``, see :func:`consistency_target`):

  - ``tangent`` (default; sCM's Algorithm 1, Lu & Song, arXiv 2410.11081): r multiplies the whole
    tangent term, ``g = −cos t·√(1 − r²·sin²t)·(F_θ⁻ − F_T) − r·(cos t·sin t·x_t + dF_θ⁻)``, so early
    training regresses onto the teacher and the self-referential ``dF_θ⁻`` enters gradually;
  - ``x_t_term`` (the rCM release, NVlabs/rcm ``rcm/models/t2v_model_distill_rcm.py``
    ``_student_scm_step``): r multiplies only ``cos t·sin t·x_t``,
    ``g = −cos t·√(1 − r²·sin²t)·(F_θ⁻ − F_T) − (r·cos t·sin t·x_t + dF_θ⁻)``; ``dF_θ⁻`` is in full from
    the first iteration. The Wan and Cosmos rCM recipes use this one;
* ``g ← g/(‖g‖₂ + norm_eps)`` per sample, in float64;
* ``L = ‖F_θ − F_θ⁻ − g‖²`` summed over elements, whose gradient is ``−2·g·∂F_θ/∂θ``.

Samples whose x_t, g or F_θ has a non-finite value are dropped (their term is 0) and counted in the
``nan_masked`` metric; a non-finite x_t (from the data) is replaced by zeros before any network sees it
(:func:`~rcm_plugins.distill.common.finite_input`), so the dropped sample leaves the gradients finite.
A non-finite value the student itself produces from a finite input still reaches its parameters
through the backward pass; the trainer then skips that optimiser step (``skipped_steps/PHASE``). With
every sample masked the loss is NaN (see :func:`~rcm_plugins.distill.common.reduce_batch`).
``reduction`` over the batch: ``mean`` (divide by B, masked samples included) or ``sum``. The
returned loss is multiplied by ``weight``. Metrics: ``nan_masked``, ``unweighted`` (the loss before
``weight``), ``tangent_norm`` (mean ‖g‖₂ before normalisation), ``teacher_gap`` (mean squared
F_θ − F_T per element), ``warmup_ratio`` (r).

``semi_continuous: true`` replaces the time part of the tangent by a finite difference with
``h = fd_step``: the JVP is taken along ``(dx_t/dt, 0)`` only and
``dF_θ⁻ += cos t·sin t·(F_θ⁻(x_t, t) − F_θ⁻(x_t, t − h))/h`` (a backward difference in t at fixed x_t;
where t ≤ h the forward point t + h is used instead, dividing by −h). Note the network sees its
timestep in float32, so h must stay well above float32 resolution of the network time.

Randomness, in order: ``t`` from the time sampler, then ``ε`` from ``ctx.generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.distill.common import (
    Reduction,
    draw_times,
    expand,
    finite_input,
    finite_rows,
    guidance_for,
    need_teacher,
    per_sample_sum,
    reduce_batch,
)
from rcm_plugins.distill.requirements import JVP, TEACHER_FIX, Requirements, jvp_fix, network_fix, time_fix
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s
from rcm_registry.jvp import jvp, jvp_with_graph
from rcm_registry.protocols import LossOutput

#: Which part of the sCM target the tangent warmup ratio r scales (see the module docstring).
WarmupScales = Literal["tangent", "x_t_term"]


@attrs.define
class ScmConfig:
    weight: float = attrs.field(default=1.0, validator=s.non_negative)
    reduction: Reduction = "mean"
    #: Iterations over which r ramps from 0 to 1 (0: r = 1 from the start).
    tangent_warmup: int = attrs.field(default=0, validator=s.non_negative)
    #: What r scales: ``tangent`` (sCM's Algorithm 1: the whole tangent term) or ``x_t_term`` (the rCM
    #: release: only cos t·sin t·x_t). Only matters while r < 1, i.e. during tangent_warmup.
    warmup_scales: WarmupScales = "tangent"
    #: Finite difference in t (step fd_step) instead of the time tangent.
    semi_continuous: bool = False
    fd_step: float = attrs.field(default=1.0e-4, validator=s.positive)
    #: How the student's output with grad and its tangent are computed: ``separate`` (a forward with grad,
    #: then a forward-mode AD pass without) or ``fused`` (one forward on dual tensors that keeps the graph on
    #: the primal: one pass fewer, the same numbers to rounding). ``fused`` needs the student without
    #: activation checkpointing (``none``, or ``auto``, which probes the dual forward and refuses it where it
    #: would not fit: it keeps about 2.3× a plain forward's activations) and the continuous tangent.
    tangent_pass: Literal["separate", "fused"] = "separate"
    #: c in the tangent normalisation g/(‖g‖₂ + c).
    norm_eps: float = attrs.field(default=0.1, validator=s.positive)
    #: CFG scale of the teacher target (default: the teacher wrapper's ``guidance``).
    guidance: float | None = attrs.field(default=None, validator=s.guidance_scale)
    student_net: str = "student"
    teacher_net: str = "teacher"
    time_sampler: str = "student"

    def requirements(self) -> Requirements:
        return Requirements(
            who="scm",
            trains=self.student_net,
            networks={self.teacher_net: (), self.student_net: (JVP,)},
            time=(self.time_sampler,),
            fixes={
                f"network:{self.teacher_net}": network_fix(self.teacher_net),
                f"network:{self.student_net}": network_fix(self.student_net),
                f"capability:{self.student_net}:{JVP}": jvp_fix(self.student_net),
                f"time:{self.time_sampler}": time_fix(self.time_sampler),
                "teacher_wrapper": TEACHER_FIX,
            },
        )

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        problems = self.requirements().check_recipe(recipe, phase)
        if self.tangent_pass == "fused" and self.semi_continuous:
            problems.append(
                "tangent_pass: fused takes the tangent by forward-mode AD; semi_continuous takes the time part "
                "as a finite difference: use tangent_pass: separate with semi_continuous"
            )
        return problems


def student_tangent(
    student_F: Callable[[Tensor, Tensor], Tensor],
    x_t: Tensor,
    t: Tensor,
    dx: Tensor,
    F_minus: Tensor,
    *,
    fd_step: float | None = None,
) -> Tensor:
    """dF_θ⁻/dt in float64 along the probability-flow direction (dx_t/dt = ``dx``, dt/dt = cos t·sin t):
    one forward-mode AD pass, or with ``fd_step`` the x part by AD and the t part as a finite difference at
    fixed x_t (``F_minus`` is F_θ⁻(x_t, t) in float64). Shared with benchmarks/jvp_precision.py."""
    cs = torch.cos(t) * torch.sin(t)
    if fd_step is None:
        return jvp(student_F, (x_t, t), (dx, cs))[1].to(torch.float64)
    dF = jvp(student_F, (x_t, t), (dx, None))[1].to(torch.float64)
    t_other = torch.where(t > fd_step, t - fd_step, t + fd_step)
    with torch.no_grad():
        F_other = student_F(x_t, t_other).to(torch.float64)
    return dF + expand(cs / (t - t_other), x_t) * (F_minus - F_other)


def consistency_target(
    F_minus: Tensor, F_T: Tensor, dF: Tensor, x_t: Tensor, t: Tensor, r: float, warmup_scales: WarmupScales
) -> Tensor:
    """The sCM target g before normalisation (float64 in, float64 out; ``t`` of shape (B,)).

    ``−cos t·√(1 − r²sin²t)·(F_θ⁻ − F_T)`` minus the tangent term: ``r·(cos t·sin t·x_t + dF_θ⁻)`` when
    ``warmup_scales`` is ``tangent``, ``r·cos t·sin t·x_t + dF_θ⁻`` when it is ``x_t_term``.
    """
    c, s_ = torch.cos(expand(t, x_t)), torch.sin(expand(t, x_t))
    x_term = c * s_ * x_t
    tangent = r * (x_term + dF) if warmup_scales == "tangent" else r * x_term + dF
    return -c * torch.sqrt(1.0 - r**2 * s_**2) * (F_minus - F_T) - tangent


class ScmLoss:
    """sCM: continuous-time consistency loss with a JVP tangent (or semi-continuous finite difference)."""

    def __init__(self, config: ScmConfig) -> None:
        self.config = config

    def warmup_ratio(self, iteration: int) -> float:
        w = self.config.tangent_warmup
        return 1.0 if w == 0 else min(1.0, iteration / w)

    def __call__(self, ctx: Any) -> LossOutput:
        cfg = self.config
        wrapper = need_teacher(ctx, "scm")
        student, teacher = ctx.net(cfg.student_net), ctx.net(cfg.teacher_net)
        x0, cond = ctx.batch.x0, ctx.batch.condition
        t = draw_times(ctx, cfg.time_sampler, x0.shape[0], x0, "scm")
        eps = ctx.randn_like(x0)
        c, s_ = torch.cos(expand(t, x0)), torch.sin(expand(t, x0))
        x_t, ok_in = finite_input((c * x0.to(torch.float64) + s_ * eps.to(torch.float64)).to(x0.dtype))
        w, null = guidance_for(ctx, cfg.guidance, "scm")

        def student_F(x: Tensor, tt: Tensor) -> Tensor:
            return wrapper.denoise(student, x, tt, cond)[1]

        with torch.no_grad():
            F_T = wrapper.denoise(teacher, x_t, t, cond, guidance=w, null_condition=null)[1].to(torch.float64)
        cs = torch.cos(t) * torch.sin(t)
        dx = (expand(cs, x0) * F_T).to(x_t.dtype)
        if cfg.tangent_pass == "fused":
            F_theta, dF = jvp_with_graph(student_F, (x_t, t), (dx, cs))
            dF = dF.to(torch.float64)
            F_minus = F_theta.detach().to(torch.float64)
        else:
            F_theta = student_F(x_t, t)
            F_minus = F_theta.detach().to(torch.float64)
            fd_step = cfg.fd_step if cfg.semi_continuous else None
            dF = student_tangent(student_F, x_t, t, dx, F_minus, fd_step=fd_step)

        r = self.warmup_ratio(ctx.iteration)
        g = consistency_target(F_minus, F_T, dF, x_t.to(torch.float64), t, r, cfg.warmup_scales)
        ok = finite_rows(g, F_minus) & ok_in
        keep = expand(ok, g)
        g = torch.where(keep, g, torch.zeros_like(g))
        g_norm = g.reshape(g.shape[0], -1).norm(dim=1)
        g = g / expand(g_norm + cfg.norm_eps, g)
        F_theta64 = torch.where(keep, F_theta.to(torch.float64), torch.zeros_like(g))
        F_minus = torch.where(keep, F_minus, torch.zeros_like(g))
        per = per_sample_sum((F_theta64 - F_minus - g) ** 2)
        loss, masked = reduce_batch(per, ok, cfg.reduction)
        n_ok = max(int(ok.sum()), 1)
        gap = ((F_minus - torch.where(keep, F_T, torch.zeros_like(F_T))) ** 2).reshape(g.shape[0], -1).mean(dim=1)
        metrics = {
            "nan_masked": float(masked),
            "unweighted": float(loss.detach()),
            "tangent_norm": float(g_norm[ok].sum() / n_ok),
            "teacher_gap": float(gap[ok].sum() / n_ok),
            "warmup_ratio": r,
        }
        return LossOutput(loss=cfg.weight * loss, metrics=metrics)


COMPONENT = rr.Component(kind="loss", name="scm", factory=ScmLoss, config=ScmConfig)
