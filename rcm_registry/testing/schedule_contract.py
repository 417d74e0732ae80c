"""What every ``schedule`` must do (``rcm_registry.protocols.Schedule``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from rcm_registry.testing.contract import ComponentContract
from rcm_registry.testing.fixtures import HALF_PI


def _trigflow_times(n: int = 33) -> Tensor:
    """``n`` TrigFlow times from 0 to π/2 inclusive, float64."""
    return torch.linspace(0.0, HALF_PI, n, dtype=torch.float64)


class ScheduleContract(ComponentContract):
    """A forward process ``x_u = α(u)·x0 + σ(u)·ε`` in its own time u, mapped to TrigFlow by SNR matching.

    Checked: float64 results of the right shape whatever the input dtype; ``from_trigflow`` and
    ``to_trigflow`` invert each other; σ/α = tan t (the same signal-to-noise ratio as TrigFlow time t);
    (dα/du, dσ/du) are the derivatives of (α, σ); data at t = 0 and pure noise at t = π/2; a
    decreasing ``time_grid`` of ``steps + 1`` times from :attr:`grid_ends`.
    """

    kind = "schedule"
    #: TrigFlow times of ``time_grid``'s first and last points (pure noise, data) for this config;
    #: None when the config moves them (``grid_max`` / ``grid_min``) and only their order is checked.
    grid_ends: ClassVar[tuple[float, float] | None] = (HALF_PI, 0.0)

    def schedule(self) -> Any:
        return self.make()

    def test_results_are_float64_of_the_input_shape(self) -> None:
        s = self.schedule()
        t32 = _trigflow_times(9)[1:-1].float()
        u = s.from_trigflow(t32)
        results = {
            "from_trigflow": u,
            "to_trigflow": s.to_trigflow(u.float()),
            "alpha": s.alpha_sigma(u.float())[0],
            "sigma": s.alpha_sigma(u.float())[1],
            "d_alpha": s.velocity_coefficients(u.float())[0],
            "d_sigma": s.velocity_coefficients(u.float())[1],
            "network_time": s.network_time(u.float()),
        }
        for what, value in results.items():
            assert isinstance(value, Tensor), f"{what} returned {type(value).__name__}, not a tensor"
            assert value.dtype == torch.float64, f"{what} of float32 times is {value.dtype}: arithmetic is float64"
            assert value.shape == t32.shape, f"{what} has shape {tuple(value.shape)} for times {tuple(t32.shape)}"
            assert bool(torch.isfinite(value).all()), f"{what} is not finite inside (0, π/2): {value}"

    def test_from_and_to_trigflow_invert_each_other(self) -> None:
        s = self.schedule()
        t = _trigflow_times()
        back = s.to_trigflow(s.from_trigflow(t))
        err = (back - t).abs().max().item()
        assert err <= 1e-12, f"to_trigflow(from_trigflow(t)) is off t by {err:.3e} (t in [0, π/2])"
        u = s.time_grid(16)
        again = s.from_trigflow(s.to_trigflow(u))
        err = (again - u).abs().max().item()
        assert err <= 1e-12 * max(1.0, u.abs().max().item()), f"from_trigflow(to_trigflow(u)) is off u by {err:.3e}"

    def test_signal_to_noise_ratio_matches_trigflow(self) -> None:
        s = self.schedule()
        t = _trigflow_times()[1:-1]
        alpha, sigma = s.alpha_sigma(s.from_trigflow(t))
        assert bool((alpha > 0).all() and (sigma > 0).all()), "α and σ must be positive inside (0, π/2)"
        ratio = sigma / alpha
        err = ((ratio - torch.tan(t)).abs() / torch.tan(t)).max().item()
        assert err <= 1e-10, f"σ/α at u = from_trigflow(t) differs from tan t by a relative {err:.3e}"

    def test_velocity_coefficients_are_the_derivatives(self) -> None:
        s = self.schedule()
        u = s.from_trigflow(torch.linspace(0.1, 1.45, 15, dtype=torch.float64))
        h = 1e-6 * max(1.0, u.abs().max().item())
        (a_plus, s_plus), (a_minus, s_minus) = s.alpha_sigma(u + h), s.alpha_sigma(u - h)
        d_alpha, d_sigma = s.velocity_coefficients(u)
        for what, got, fd in [
            ("dα/du", d_alpha, (a_plus - a_minus) / (2 * h)),
            ("dσ/du", d_sigma, (s_plus - s_minus) / (2 * h)),
        ]:
            err = (got - fd).abs().max().item()
            scale = max(fd.abs().max().item(), 1e-12)
            assert err <= 1e-6 * scale, f"{what} differs from a central difference of alpha_sigma by {err:.3e}"

    def test_data_at_zero_and_noise_at_half_pi(self) -> None:
        s = self.schedule()
        ends = s.from_trigflow(torch.tensor([0.0, HALF_PI], dtype=torch.float64))
        assert bool(torch.isfinite(ends).all()), f"from_trigflow(0, π/2) = {ends.tolist()}"
        alpha, sigma = s.alpha_sigma(ends)
        assert alpha[0].item() > 0 and abs(sigma[0].item()) <= 1e-12, (
            f"at t = 0 the state must be data: α = {alpha[0].item()}, σ = {sigma[0].item()}"
        )
        assert abs(alpha[1].item()) <= 1e-12 and sigma[1].item() > 0, (
            f"at t = π/2 the state must be noise: α = {alpha[1].item()}, σ = {sigma[1].item()}"
        )

    def test_time_grid_decreases_from_noise_to_data(self) -> None:
        s = self.schedule()
        for steps in (1, 2, 7):
            grid = s.time_grid(steps)
            assert grid.dtype == torch.float64, f"time_grid({steps}) is {grid.dtype}, not float64"
            assert grid.shape == (steps + 1,), f"time_grid({steps}) has shape {tuple(grid.shape)}"
            assert bool((grid[1:] < grid[:-1]).all()), f"time_grid({steps}) does not decrease: {grid.tolist()}"
            t = s.to_trigflow(grid)
            assert bool((t >= 0).all() and (t <= HALF_PI + 1e-12).all()), (
                f"time_grid({steps}) leaves [0, π/2] in TrigFlow time: {t.tolist()}"
            )
            if self.grid_ends is not None:
                first, last = self.grid_ends
                assert abs(t[0].item() - first) <= 1e-9 and abs(t[-1].item() - last) <= 1e-9, (
                    f"time_grid({steps}) runs from t = {t[0].item()} to {t[-1].item()}, not {first} to {last}"
                )
