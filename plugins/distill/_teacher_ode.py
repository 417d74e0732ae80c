"""What the teacher ODE samplers ``trigflow_euler`` and ``trigflow_unipc`` share: config, step grid, driver.

Both solve the teacher's probability-flow ODE in TrigFlow time with classifier-free guidance, reading the
network through the recipe's ``teacher_wrapper`` (``ctx.teacher``), which gives ``x̂0`` at TrigFlow time t.
Neither depends on how the state is scaled, so on a rectified-flow teacher (whose state is TrigFlow's
divided by ``cos t + sin t``) they are the solvers of Wan's and Cosmos' pipelines.

Grid (:func:`time_grid`): uniform in rectified-flow time u from 1 to 0, shifted Wan-style
(:func:`rcm_plugins.core._time.shift_rf`), mapped to TrigFlow by ``t = atan2(u', 1 − u')``, and capped at
``atan(sigma_max)`` when ``sigma_max`` is set (teachers that are undefined at pure noise, like EDM ones);
steps the cap empties are dropped. Start: ``x = sin t_0·ε`` with ``ε = ctx.randn()`` (so with per-sample
generators in the context each sample's noise is its own). One teacher evaluation (with CFG) per step;
``ctx.report_step()`` after each. The state is float64 throughout; the result has ``ctx.dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from rcm_plugins.core._time import shift_rf
from rcm_plugins.distill.common import teacher_guides
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s

#: What to add to a recipe without a teacher wrapper (for the messages).
TEACHER_WRAPPER_FIX = "e.g. `teacher_wrapper: {use: rectified_flow, t_scale: 1000}`"
#: The guided teacher: ``denoise(x_t, t) -> x̂0`` at TrigFlow time ``t`` (float64 state).
Denoise = Callable[[Tensor, float], Tensor]
#: A solver: ``solve(denoise, x, times, step) -> x`` at the last time; ``step()`` after every evaluation.
Solve = Callable[[Denoise, Tensor, Sequence[float], Callable[[], None]], Tensor]


def time_grid(steps: int, shift: float, sigma_max: float | None = None) -> list[float]:
    """TrigFlow times of a teacher ODE solve, decreasing from noise to 0 (see the module docs)."""
    cap = math.atan(sigma_max) if sigma_max is not None else math.pi / 2
    u = shift_rf(torch.tensor([1.0 - i / steps for i in range(steps + 1)], dtype=torch.float64), shift)
    times: list[float] = []
    for v in u.tolist():
        t = min(math.atan2(v, 1.0 - v), cap)
        if not times or t < times[-1]:  # capping can repeat the first time: drop empty steps
            times.append(t)
    return times


@attrs.define
class TeacherOdeConfig:
    """Settings of ``trigflow_euler`` and ``trigflow_unipc`` (``rcm synth --steps/--shift/--guidance/--sigma-max``)."""

    steps: int = attrs.field(default=50, validator=s.positive)
    #: Wan-style time shift of the grid (Wan2.1 uses 3 at 480p, 5 at 720p; 1: uniform in u).
    shift: float = attrs.field(default=5.0, validator=[s.positive, s.finite])
    #: CFG scale w in F_u + w·(F_c − F_u); None: the teacher wrapper's ``guidance``.
    guidance: float | None = attrs.field(default=None, validator=s.guidance_scale)
    #: Start at atan(sigma_max) instead of pure noise (EDM-style teachers); None: π/2.
    sigma_max: float | None = attrs.field(default=None, validator=[s.positive, s.finite])

    def times(self) -> list[float]:
        return time_grid(self.steps, self.shift, self.sigma_max)

    def check_recipe(self, recipe: Any, where: str) -> list[str]:
        if recipe.body.teacher_wrapper is None:
            return [f"reads the network through the teacher wrapper: add {TEACHER_WRAPPER_FIX} to the recipe"]
        return []


class TeacherOdeSampler:
    """Drives a solver over the config's grid with the guided teacher of a :class:`SampleContext`."""

    #: Component name, for messages.
    name = ""

    def __init__(self, config: TeacherOdeConfig) -> None:
        self.config = config

    @staticmethod
    def solve(denoise: Denoise, x: Tensor, times: Sequence[float], step: Callable[[], None]) -> Tensor:
        raise NotImplementedError

    def __call__(self, ctx: Any) -> Tensor:
        teacher = ctx.teacher
        if teacher is None:
            raise rr.UserError(
                f"sampler {self.name} reads the network through the recipe's teacher wrapper, and it "
                f"has none: add {TEACHER_WRAPPER_FIX}"
            )
        guidance = self.config.guidance
        if guidance is None:
            guidance = float(getattr(teacher, "guidance", 1.0))
        null = ctx.null_condition
        if teacher_guides(teacher, guidance) and null is None:
            raise rr.UserError(
                f"sampler {self.name}: guidance {guidance} needs an unconditional (null / negative) condition, and "
                "there is none; pass guidance 1 (e.g. --guidance 1) to sample the conditional teacher"
            )
        times = self.config.times()
        x = math.sin(times[0]) * ctx.randn().to(torch.float64)
        b = x.shape[0]

        def denoise(x_t: Tensor, t: float) -> Tensor:
            at = torch.full((b,), t, dtype=torch.float64, device=x_t.device)
            return teacher.denoise(ctx.net, x_t, at, ctx.condition, guidance=guidance, null_condition=null)[0]

        with torch.no_grad():
            return self.solve(denoise, x, times, ctx.report_step).to(ctx.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
