"""``trigflow_unipc``: the teacher's probability-flow ODE in TrigFlow time, UniPC steps, with CFG (Wan's solver).

UniPC (Zhao et al., 2023, arXiv 2302.04867) in its B(h) = e^{−h} − 1 form with data prediction, as Wan2.1
samples: a second-order multistep predictor and the UniC corrector, which reuses the evaluation at the new
point, so the cost stays one teacher call per step. With α = cos t, σ = sin t, λ = log(α/σ) and
h = λ' − λ, the first-order part is ``x' = (σ'/σ)·x + α'·(1 − e^{−h})·x̂0``. The step to t = 0 returns the
last x̂0. Grid, start and settings: :mod:`rcm_plugins.distill._teacher_ode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from rcm_plugins.distill._teacher_ode import Denoise, TeacherOdeConfig, TeacherOdeSampler
from torch import Tensor

import rcm_registry as rr

#: The last predictor step, kept for the corrector: (x before it, its t, its x̂0, its scaled differences D_k
#: and their ratios r_k).
_Step = tuple[Tensor, float, Tensor, list[Tensor], list[float]]


def _half_log_snr(t: float) -> float:
    """λ = log(α/σ) = log(cos t / sin t) of TrigFlow time t (increases towards the data)."""
    return math.log(math.cos(t) / math.sin(t))


def _unipc_rhos(h: float, rks: Sequence[float]) -> list[float]:
    """UniPC coefficients (B(h) = e^{−h} − 1, data prediction) for the differences at ratios ``rks``.

    They solve ``Σ_k ρ_k r_k^(j−1) = j!·φ_{j+1}(−h)·(−h)/B(h)``, j = 1..len(rks): the conditions under which
    the update matches the Taylor expansion of the exact solution to order len(rks) + 1.
    """
    hh = -h
    h_phi = math.expm1(hh)
    b_h = h_phi
    h_phi_k = h_phi / hh - 1.0
    factorial = 1
    rhs = []
    for j in range(1, len(rks) + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    matrix = torch.tensor([[r ** (j - 1) for r in rks] for j in range(1, len(rks) + 1)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _first_order(x: Tensor, t: float, t_next: float, m: Tensor) -> Tensor:
    h = _half_log_snr(t_next) - _half_log_snr(t)
    return (math.sin(t_next) / math.sin(t)) * x - math.cos(t_next) * math.expm1(-h) * m


def _corrected(last: _Step, t: float, m: Tensor) -> Tensor:
    """UniC: redo the last step from its start with the model output at its end included."""
    x_prev, t_prev, m_prev, diffs, ratios = last
    h = _half_log_snr(t) - _half_log_snr(t_prev)
    rhos = [0.5] if not ratios else _unipc_rhos(h, [*ratios, 1.0])
    correction = sum((rho * d for rho, d in zip(rhos[:-1], diffs, strict=True)), torch.zeros_like(m))
    correction = correction + rhos[-1] * (m - m_prev)
    return _first_order(x_prev, t_prev, t, m_prev) - math.cos(t) * math.expm1(-h) * correction


def unipc_solve(denoise: Denoise, x: Tensor, times: Sequence[float], step: Callable[[], None] = lambda: None) -> Tensor:
    """UniPC steps from ``times[0]`` to ``times[-1]`` (float64); ``step()`` after every evaluation."""
    x = x.to(torch.float64)
    last: _Step | None = None
    earlier: tuple[float, Tensor] | None = None  # (λ, x̂0) of the point before the last
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        m = denoise(x, t).to(torch.float64)
        if last is not None:
            x = _corrected(last, t, m)
        if t_next <= 0.0:
            x = m
        else:
            lam, lam_next = _half_log_snr(t), _half_log_snr(t_next)
            h = lam_next - lam
            diffs: list[Tensor] = []
            ratios: list[float] = []
            if earlier is not None:  # second order from the previous point
                r = (earlier[0] - lam) / h
                ratios.append(r)
                diffs.append((earlier[1] - m) / r)
            last = (x, t, m, diffs, ratios)
            x = _first_order(x, t, t_next, m)
            if diffs:
                # UniPC's order-2 predictor weight is 1/2 (its B(h) form), not the solved coefficient.
                x = x - math.cos(t_next) * math.expm1(-h) * 0.5 * diffs[0]
            earlier = (lam, m)
        step()
    return x


class TrigflowUnipc(TeacherOdeSampler):
    """Teacher ODE sampler in TrigFlow time: UniPC (order 2, Wan's solver) on a Wan-shifted grid, with CFG."""

    name = "trigflow_unipc"
    solve = staticmethod(unipc_solve)


COMPONENT = rr.Component(kind="sampler", name="trigflow_unipc", factory=TrigflowUnipc, config=TeacherOdeConfig)
