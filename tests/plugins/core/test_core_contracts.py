"""The core plugin's schedules, time samplers, loss, datasets, sampler and metrics pass their kinds' contracts."""

from __future__ import annotations

from typing import Any, ClassVar

from rcm_registry.testing import (
    DatasetContract,
    LossContract,
    MetricContract,
    SamplerContract,
    ScheduleContract,
    TimeSamplerContract,
)


class TestTrigflowSchedule(ScheduleContract):
    name = "trigflow"
    config: ClassVar[dict[str, Any]] = {"shift": 3.0, "time_scale": 1000.0}


class TestRectifiedFlowSchedule(ScheduleContract):
    name = "rectified_flow"
    config: ClassVar[dict[str, Any]] = {"shift": 5.0}


class TestRectifiedFlowScheduleLimitedGrid(ScheduleContract):
    name = "rectified_flow"
    config: ClassVar[dict[str, Any]] = {"grid_max": 0.9, "grid_min": 0.1}
    grid_ends = None


class TestLognormalTime(TimeSamplerContract):
    name = "lognormal"


class TestUniformShiftTime(TimeSamplerContract):
    name = "uniform_shift"
    config: ClassVar[dict[str, Any]] = {"shift": 5.0}


class TestUniformTime(TimeSamplerContract):
    name = "uniform"


class TestFlowMatchingLoss(LossContract):
    name = "flow_matching"
    config: ClassVar[dict[str, Any]] = {"cond_dropout": 0.5}
    trained = "teacher"


class TestGaussianMixture2dDataset(DatasetContract):
    name = "gaussian_mixture_2d"
    config: ClassVar[dict[str, Any]] = {"layout": "grid", "labels": True, "classes": 5}


class TestRandomLatentsDataset(DatasetContract):
    name = "random_latents"
    config: ClassVar[dict[str, Any]] = {"shape": [4, 2, 2, 2], "text_length": 3, "text_dim": 8, "condition_frames": 1}


class TestEulerSampler(SamplerContract):
    name = "euler"
    config: ClassVar[dict[str, Any]] = {"steps": 4, "guidance": 2.0}


class TestModeCoverageMetric(MetricContract):
    name = "mode_coverage"


class TestHighQualityRateMetric(MetricContract):
    name = "high_quality_rate"


class TestSlicedWassersteinMetric(MetricContract):
    name = "sliced_wasserstein"
