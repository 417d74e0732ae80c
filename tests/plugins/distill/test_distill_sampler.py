"""trigflow_multistep with exact denoisers of a Gaussian data distribution: the sample statistics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from rcm_plugins.distill.trigflow_multistep import TrigflowMultistep, TrigflowMultistepConfig
from torch import Tensor, nn

from rcm_registry.engine.context import SampleContext

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
S = 0.4  # data: N(MU, S²·I)
N = 40_000


def consistency_gain(t: float) -> float:
    """Exact PF-ODE map to t = 0 for Gaussian data: x0 = μ + k·(x_t − cos t·μ), k = S/√(cos²t·S² + sin²t)."""
    return S / math.sqrt(math.cos(t) ** 2 * S**2 + math.sin(t) ** 2)


def posterior_gain(t: float) -> float:
    """E[x0 | x_t] for Gaussian data: x0 = μ + k·(x_t − cos t·μ), k = cos t·S²/(cos²t·S² + sin²t)."""
    return math.cos(t) * S**2 / (math.cos(t) ** 2 * S**2 + math.sin(t) ** 2)


class OracleTeacher:
    """A teacher wrapper whose 'network' is an exact affine denoiser of the Gaussian data."""

    def __init__(self, gain: Callable[[float], float]) -> None:
        self.gain = gain
        self.times: list[float] = []

    def denoise(self, net: nn.Module, x_t: Tensor, t: Tensor, condition: dict, **_: object) -> tuple[Tensor, Tensor]:
        tt = float(t[0])
        assert torch.all(t == tt)
        self.times.append(tt)
        x0 = MU + self.gain(tt) * (x_t.double() - math.cos(tt) * MU)
        F = (math.cos(tt) * x_t.double() - x0) / math.sin(tt)
        return x0.to(x_t.dtype), F.to(x_t.dtype)


def predicted_stats(times: list[float], gain: Callable[[float], float]) -> tuple[Tensor, float]:
    """Mean and per-coordinate variance of the sampler's output, propagated exactly through the steps."""
    m, v = torch.zeros(2, dtype=torch.float64), 1.0  # x = ε at t_0
    for t, t_next in itertools.pairwise(times):
        k = gain(t)
        m0, v0 = MU + k * (m - math.cos(t) * MU), k**2 * v
        if t_next == 0.0:
            return m0, v0
        m, v = math.cos(t_next) * m0, math.cos(t_next) ** 2 * v0 + math.sin(t_next) ** 2
    raise AssertionError


def _sample(steps: int, teacher: OracleTeacher, mid: list[float]) -> Tensor:
    cfg = TrigflowMultistepConfig(steps=steps, sigma_max=80.0, mid_times=mid)
    ctx = SampleContext(
        net=nn.Identity(), shape=(N, 2), condition={}, generator=torch.Generator().manual_seed(steps), teacher=teacher
    )
    return TrigflowMultistep(cfg)(ctx).double()


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("gain", [consistency_gain, posterior_gain], ids=["consistency", "posterior_mean"])
def test_sample_statistics(steps: int, gain: Callable[[float], float]) -> None:
    mid = [1.5, 1.4, 1.0]
    teacher = OracleTeacher(gain)
    x = _sample(steps, teacher, mid)
    times = [math.atan(80.0), *mid[: steps - 1], 0.0]
    assert teacher.times == pytest.approx(times[:-1])
    m, v = predicted_stats(times, gain)
    sd = math.sqrt(v)
    assert torch.allclose(x.mean(0), m, atol=5 * sd / math.sqrt(N) + 1e-12)
    assert torch.allclose(x.std(0), torch.full((2,), sd, dtype=torch.float64), rtol=0.03)
    if gain is consistency_gain:
        # The ideal consistency student reproduces the data in any number of steps (up to the
        # O(1/σ_max) of starting from ε instead of x_{t_0}).
        assert torch.allclose(x.mean(0), MU, atol=0.03) and abs(float(x.std(0).mean()) - S) < 0.02


def test_steps_need_mid_times() -> None:
    with pytest.raises(ValueError, match="mid_times"):
        TrigflowMultistepConfig(steps=3, mid_times=[1.0])
    with pytest.raises(ValueError, match="mid_times"):
        TrigflowMultistepConfig(steps=3, mid_times=[1.0, 1.2])
    assert TrigflowMultistepConfig(steps=1).times() == pytest.approx([math.atan(80.0), 0.0])
