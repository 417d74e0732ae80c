"""Schedules ``trigflow`` and ``rectified_flow`` against float64 math written out here."""

from __future__ import annotations

import math

import pytest
import torch

import rcm_registry as rr


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _ts() -> torch.Tensor:
    return torch.linspace(0.0, math.pi / 2, 101, dtype=torch.float64)


def test_trigflow_identity_and_coefficients(registry: rr.Registry) -> None:
    sched = registry.build("schedule", "trigflow")
    t = _ts()
    torch.testing.assert_close(sched.from_trigflow(t), t, rtol=0, atol=0)
    torch.testing.assert_close(sched.to_trigflow(t), t, rtol=0, atol=0)
    alpha, sigma = sched.alpha_sigma(t)
    d_alpha, d_sigma = sched.velocity_coefficients(t)
    for got, want in [(alpha, [math.cos(v) for v in t.tolist()]), (sigma, [math.sin(v) for v in t.tolist()])]:
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)
    # derivative by central difference of the math functions
    h = 1e-6
    torch.testing.assert_close(d_alpha, (torch.cos(t + h) - torch.cos(t - h)) / (2 * h), rtol=0, atol=1e-9)
    torch.testing.assert_close(d_sigma, (torch.sin(t + h) - torch.sin(t - h)) / (2 * h), rtol=0, atol=1e-9)
    torch.testing.assert_close(sched.network_time(t), t, rtol=0, atol=0)
    assert registry.build("schedule", "trigflow", time_scale=1000).network_time(t)[-1].item() == pytest.approx(
        500 * math.pi
    )


def test_rectified_flow_matches_trigflow_snr(registry: rr.Registry) -> None:
    sched = registry.build("schedule", "rectified_flow")
    t = _ts()[1:-1]
    u = sched.from_trigflow(t)
    assert u.dtype == torch.float64
    want = torch.tensor([math.sin(v) / (math.cos(v) + math.sin(v)) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(u, want, rtol=0, atol=1e-15)
    # same signal-to-noise ratio: σ/α in both parameterisations
    alpha, sigma = sched.alpha_sigma(u)
    torch.testing.assert_close(sigma / alpha, torch.tan(t), rtol=1e-12, atol=0)
    # x_u is x_t rescaled: x_u = (1 − u)/cos t · x_t
    torch.testing.assert_close(alpha / torch.cos(t), sigma / torch.sin(t), rtol=1e-13, atol=0)
    torch.testing.assert_close(sched.to_trigflow(u), t, rtol=0, atol=1e-14)
    ends = sched.from_trigflow(torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        sched.to_trigflow(torch.tensor([0.0, 1.0], dtype=torch.float64)),
        torch.tensor([0.0, math.pi / 2], dtype=torch.float64),
        rtol=0,
        atol=1e-15,
    )
    d_alpha, d_sigma = sched.velocity_coefficients(u)
    assert torch.all(d_alpha == -1) and torch.all(d_sigma == 1)
    torch.testing.assert_close(sched.network_time(u), 1000 * u, rtol=0, atol=0)


def test_round_trip_u_to_t_to_u(registry: rr.Registry) -> None:
    sched = registry.build("schedule", "rectified_flow")
    u = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    torch.testing.assert_close(sched.from_trigflow(sched.to_trigflow(u)), u, rtol=0, atol=1e-15)


def test_time_grids(registry: rr.Registry) -> None:
    rf = registry.build("schedule", "rectified_flow", shift=3.0)
    grid = rf.time_grid(4)
    lin = [1.0, 0.75, 0.5, 0.25, 0.0]
    want = torch.tensor([3 * v / (1 + 2 * v) for v in lin], dtype=torch.float64)
    torch.testing.assert_close(grid, want, rtol=0, atol=1e-15)
    assert grid.dtype == torch.float64

    tf = registry.build("schedule", "trigflow", shift=3.0)
    grid_t = tf.time_grid(4)
    assert grid_t[0].item() == pytest.approx(math.pi / 2, abs=1e-15) and grid_t[-1].item() == 0.0
    lin_t = [v * math.pi / 2 for v in lin]
    want_t = torch.tensor([math.atan(3 * math.tan(v)) if v < math.pi / 2 else v for v in lin_t], dtype=torch.float64)
    torch.testing.assert_close(grid_t, want_t, rtol=0, atol=1e-14)
    # the shift means the same thing in both schedules: tan t' = shift·tan t
    t_unshifted = [math.atan2(v, 1 - v) for v in lin]
    want_both = torch.tensor([math.atan2(3 * math.sin(v), math.cos(v)) for v in t_unshifted], dtype=torch.float64)
    torch.testing.assert_close(rf.to_trigflow(grid), want_both, rtol=0, atol=1e-14)

    limited = registry.build("schedule", "rectified_flow", grid_max=0.9, grid_min=0.1).time_grid(8)
    assert limited[0].item() == pytest.approx(0.9) and limited[-1].item() == pytest.approx(0.1)
    assert torch.all(limited[1:] < limited[:-1])


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("rectified_flow", {"time_scale": -1.0}, "time_scale: must be > 0"),
        ("rectified_flow", {"shift": 0.0}, "shift: must be > 0"),
        ("rectified_flow", {"grid_max": 1.5}, "grid_max: must be in [0.0, 1.0]"),
        ("rectified_flow", {"grid_min": 0.5, "grid_max": 0.5}, "grid_min (0.5) must be < grid_max"),
        ("trigflow", {"time_scale": "x"}, "time_scale: expected float"),
        ("trigflow", {"shift": float("nan")}, "shift: nan is out of range for a float"),
        ("trigflow", {"grid_max": 2.0}, "grid_max: must be in"),
        ("trigflow", {"bogus": 1}, "bogus: unknown key"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, name: str, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("schedule", name, **config)
    assert fragment in str(info.value)
