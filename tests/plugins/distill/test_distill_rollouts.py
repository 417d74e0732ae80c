"""Rollouts: number of steps, the time sequence, and gradient through the last student call only."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from rcm_plugins.distill.fixed_timesteps import FixedTimesteps, FixedTimestepsConfig
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from rcm_plugins.distill.stochastic_backward import StochasticBackward, StochasticBackwardConfig
from torch import Tensor, nn

from rcm_registry.testing.fixtures import HALF_PI, FixedTimes, TinyNet, step_context


class Recorder(nn.Module):
    """Records, per call: whether a graph is being built, the TrigFlow time, and the output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[dict] = []

    def forward(self, x: Tensor, timestep: Tensor, **cond: Tensor) -> Tensor:
        y = self.net(x, timestep, **cond)
        s = timestep / 1000.0  # rectified-flow time s = sin t/(cos t + sin t) → t = atan2(s, 1 − s)
        self.calls.append(
            {"grad": torch.is_grad_enabled(), "t": torch.atan2(s, 1 - s), "x_grad": x.requires_grad, "y": y}
        )
        return y


def _ctx(rec: Recorder, critic: FixedTimes | None = None, seed: int = 0) -> object:
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    wrapper = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0))
    time = {"critic": critic or FixedTimes([0.9])}
    return step_context(x0, {"student": rec}, teacher=wrapper, time=time, seed=seed, null=False)


@pytest.mark.parametrize("make", ["stochastic", "fixed"])
def test_number_of_steps_is_uniform(make: str) -> None:
    rec = Recorder(TinyNet(seed=1))
    rollout = (
        StochasticBackward(StochasticBackwardConfig(max_steps=4))
        if make == "stochastic"
        else FixedTimesteps(FixedTimestepsConfig(mid_times=[1.5, 1.4, 1.0]))
    )
    ctx = _ctx(rec)
    counts: Counter[int] = Counter()
    runs = 800
    for _ in range(runs):
        before = len(rec.calls)
        with torch.no_grad():
            rollout(ctx, grad=False)
        counts[len(rec.calls) - before] += 1
    assert set(counts) == {1, 2, 3, 4}
    for n in range(1, 5):  # binomial(800, 1/4): sd ≈ 12
        assert abs(counts[n] - runs / 4) < 60, counts


def test_stochastic_backward_times_and_gradient_through_last_call_only() -> None:
    rec = Recorder(TinyNet(seed=2))
    draws = [
        torch.tensor([1.0, 1.6, 0.2, 1.2, 0.7]),
        torch.tensor([1.1, 0.5, 0.1, 1.3, 0.8]),
        torch.tensor([0.3, 0.4, 0.05, 1.0, 0.9]),
    ]
    rollout = StochasticBackward(StochasticBackwardConfig(max_steps=4))
    for seed in range(40):  # until a 4-step rollout comes up
        rec.calls.clear()
        critic = FixedTimes(*draws)
        x_hat = rollout(_ctx(rec, critic, seed=seed), grad=True)
        if len(rec.calls) == 4:
            break
    assert len(rec.calls) == 4
    # t_0 = π/2, then t_{i+1} = min(t_i, τ_i)
    expect = torch.full((5,), HALF_PI, dtype=torch.float64)
    for i, call in enumerate(rec.calls):
        assert torch.allclose(call["t"], expect, atol=1e-9), (i, call["t"], expect)
        if i < 3:
            expect = torch.minimum(expect, draws[i].double())
    assert [c["grad"] for c in rec.calls] == [False, False, False, True]
    assert not any(c["x_grad"] for c in rec.calls)
    assert [c["y"].requires_grad for c in rec.calls] == [False, False, False, True]
    assert x_hat.requires_grad
    x_hat.sum().backward()
    assert all(p.grad is not None for p in rec.parameters())


def test_rollout_without_grad_builds_no_graph() -> None:
    rec = Recorder(TinyNet(seed=3))
    x_hat = StochasticBackward(StochasticBackwardConfig(max_steps=3))(_ctx(rec), grad=False)
    assert not x_hat.requires_grad and not any(c["grad"] for c in rec.calls)


def test_stochastic_backward_sigma_max_start() -> None:
    rec = Recorder(TinyNet(seed=4))
    StochasticBackward(StochasticBackwardConfig(max_steps=1, sigma_max=80.0))(_ctx(rec), grad=False)
    assert torch.allclose(rec.calls[0]["t"], torch.full((5,), math.atan(80.0), dtype=torch.float64), atol=1e-9)


def test_fixed_timesteps_follow_the_sampler_times() -> None:
    rec = Recorder(TinyNet(seed=5))
    rollout = FixedTimesteps(FixedTimestepsConfig(mid_times=[1.5, 1.2, 0.8], steps=4, sigma_max=80.0))
    x_hat = rollout(_ctx(rec), grad=True)
    got = [float(c["t"][0]) for c in rec.calls]
    assert got == pytest.approx([math.atan(80.0), 1.5, 1.2, 0.8], abs=1e-9)
    assert [c["grad"] for c in rec.calls] == [False, False, False, True] and x_hat.requires_grad


def test_fixed_timesteps_config_checks() -> None:
    with pytest.raises(ValueError, match="mid_times"):
        FixedTimestepsConfig(mid_times=[1.0, 1.2])
    with pytest.raises(ValueError, match="steps"):
        FixedTimestepsConfig(mid_times=[1.0], steps=3)
