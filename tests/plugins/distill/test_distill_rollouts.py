"""Rollouts: number of steps, the time sequence, and gradient through the last student call only."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from rcm_plugins.distill.fixed_timesteps import FixedTimesteps, FixedTimestepsConfig
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from rcm_plugins.distill.stochastic_backward import StochasticBackward, StochasticBackwardConfig
from safetensors.torch import load_file
from torch import Tensor, nn

from rcm_registry.engine.checkpoint import latest_checkpoint
from rcm_registry.testing import run_cli
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
            {"grad": torch.is_grad_enabled(), "t": torch.atan2(s, 1 - s), "x_grad": x.requires_grad, "y": y, "x": x}
        )
        return y


def _ctx(rec: Recorder, critic: FixedTimes | None = None, seed: int = 0, phase_step: int = 0) -> object:
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    wrapper = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0))
    time = {"critic": critic or FixedTimes([0.9])}
    return step_context(x0, {"student": rec}, teacher=wrapper, time=time, seed=seed, null=False, phase_step=phase_step)


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


def test_cycled_steps_follow_the_phase_step_and_draw_nothing_for_n() -> None:
    rec = Recorder(TinyNet(seed=6))
    rollout = StochasticBackward(StochasticBackwardConfig(max_steps=3, steps="cycle"))
    got = []
    for phase_step in range(8):
        rec.calls.clear()
        ctx = _ctx(rec, phase_step=phase_step, seed=3)
        with torch.no_grad():
            rollout(ctx, grad=False)
        got.append(len(rec.calls))
        # Random N takes one draw before ε; cycled N takes none, so ε is the generator's first draw.
        first_noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        x_in = first_noise / (math.cos(HALF_PI) + math.sin(HALF_PI))  # rectified-flow input at t = π/2
        assert torch.allclose(rec.calls[0]["x"], x_in, atol=1e-12)
    assert got == [1, 2, 3, 1, 2, 3, 1, 2]  # N = phase_step mod max_steps + 1, as the rCM release


QUICKSTART_RCM = str(Path(__file__).resolve().parents[3] / "recipes/quickstart/rcm.yaml")
SMALL_CYCLED_RCM = [
    "--set", "networks.teacher.weights=null",
    "--set", "networks.teacher.width=16",
    "--set", "networks.teacher.depth=1",
    "--set", "run.batch_size=8",
    "--set", "phases.student.losses[0].tangent_warmup=2",
    "--set", "phases.student.losses[1].start=2",
    "--set", "phases.critic.start=2",
    "--set", "rollout.steps=cycle",
    "--no-progress",
]  # fmt: skip


def _weights(run: Path) -> dict[str, Tensor]:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return {name: t for file in sorted(ckpt.glob("*.safetensors")) for name, t in load_file(str(file)).items()}


def test_cycled_rollout_in_training_counts_each_phase_and_resumes_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, int]] = []
    real = StochasticBackward.number_of_steps

    def recording(self: StochasticBackward, ctx: object) -> int:
        n = real(self, ctx)
        seen.append((ctx.phase, ctx.phase_step, n))
        return n

    monkeypatch.setattr(StochasticBackward, "number_of_steps", recording)
    whole = run_cli(
        "run", QUICKSTART_RCM, *SMALL_CYCLED_RCM, "--set", "run.iterations=11", "--out", str(tmp_path / "a")
    )
    assert whole.code == 0, whole.err
    # Student steps at 0, 1 (sCM only), then at 2, 4, ..., 10; the critic at 3, 5, 7, 9. Each phase's
    # rollouts cycle through 1..4 steps by the phase's own step count (DMD joins at student step 2).
    assert [n for phase, _, n in seen if phase == "student"] == [3, 4, 1, 2, 3]
    assert [n for phase, _, n in seen if phase == "critic"] == [1, 2, 3, 4]
    assert all(n == step % 4 + 1 for _, step, n in seen)
    part = ["--out", str(tmp_path / "b")]
    assert run_cli("run", QUICKSTART_RCM, *SMALL_CYCLED_RCM, "--set", "run.iterations=5", *part).code == 0
    resumed = run_cli("run", QUICKSTART_RCM, *SMALL_CYCLED_RCM, "--set", "run.iterations=11", *part, "--resume")
    assert resumed.code == 0, resumed.err
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
