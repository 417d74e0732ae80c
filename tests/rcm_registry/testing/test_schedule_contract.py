"""ScheduleContract: a correct schedule passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

import math

import pytest
from contract_outcomes import checks_of, failing_checks
from rcm_plugins.core.trigflow_schedule import TrigFlowSchedule, TrigFlowScheduleConfig
from torch import Tensor

from rcm_registry.testing import ScheduleContract


class Float32Coefficients(TrigFlowSchedule):
    def alpha_sigma(self, u: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(c.float() for c in super().alpha_sigma(u))


class OffByAFactor(TrigFlowSchedule):
    """to_trigflow is not from_trigflow's inverse."""

    def to_trigflow(self, u: Tensor) -> Tensor:
        return super().to_trigflow(u) * 0.999


class NoisierThanTrigflow(TrigFlowSchedule):
    """σ = 1.1·sin t: not the SNR of TrigFlow time t (and its dσ/du is that of sin t)."""

    def alpha_sigma(self, u: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = super().alpha_sigma(u)
        return alpha, 1.1 * sigma


class WrongSignVelocity(TrigFlowSchedule):
    def velocity_coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        d_alpha, d_sigma = super().velocity_coefficients(u)
        return -d_alpha, d_sigma


class ClampedEnds(TrigFlowSchedule):
    """Never reaches data or pure noise: t is clamped into [0.01, π/2 − 0.01]."""

    def from_trigflow(self, t: Tensor) -> Tensor:
        return super().from_trigflow(t).clamp(0.01, math.pi / 2 - 0.01)


class IncreasingGrid(TrigFlowSchedule):
    def time_grid(self, steps: int) -> Tensor:
        return super().time_grid(steps).flip(0)


SNR = "test_signal_to_noise_ratio_matches_trigflow"
DERIVATIVES = "test_velocity_coefficients_are_the_derivatives"
ROUND_TRIP = "test_from_and_to_trigflow_invert_each_other"
GRID = "test_time_grid_decreases_from_noise_to_data"
#: Each broken schedule and the checks it fails (float32 coefficients also lose the precision SNR
#: matching and the central difference need).
BROKEN = [
    (Float32Coefficients, {"test_results_are_float64_of_the_input_shape", SNR, DERIVATIVES}),
    (OffByAFactor, {ROUND_TRIP, GRID}),
    (NoisierThanTrigflow, {SNR, DERIVATIVES}),
    (WrongSignVelocity, {DERIVATIVES}),
    (ClampedEnds, {ROUND_TRIP, "test_data_at_zero_and_noise_at_half_pi"}),
    (IncreasingGrid, {GRID}),
]


def test_the_built_in_trigflow_schedule_passes() -> None:
    assert failing_checks(ScheduleContract, name="trigflow") == set()


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_schedule_fails_its_checks(broken: type[TrigFlowSchedule], fails: set[str]) -> None:
    def make(self: object, **overrides: object) -> TrigFlowSchedule:
        return broken(TrigFlowScheduleConfig())

    assert failing_checks(ScheduleContract, make=make) == fails


def test_every_check_fails_for_some_broken_schedule() -> None:
    assert set().union(*(fails for _, fails in BROKEN)) == checks_of(ScheduleContract)
