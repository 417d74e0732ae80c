"""The distill plugin's losses, rollouts and sampler pass their kinds' contracts."""

from __future__ import annotations

from typing import Any, ClassVar

from rcm_registry.testing import LossContract, RolloutContract, SamplerContract


class TestScmLoss(LossContract):
    name = "scm"
    config: ClassVar[dict[str, Any]] = {"tangent_warmup": 10}
    iteration = 5  # inside the warmup: both terms of g


class TestScmLossFusedPass(LossContract):
    name = "scm"
    config: ClassVar[dict[str, Any]] = {"tangent_warmup": 10, "tangent_pass": "fused"}
    iteration = 5


class TestScmLossSemiContinuous(LossContract):
    name = "scm"
    config: ClassVar[dict[str, Any]] = {"semi_continuous": True}


class TestDcmLoss(LossContract):
    name = "dcm"
    config: ClassVar[dict[str, Any]] = {"steps": 4, "shift": 3.0}


class TestDmdLoss(LossContract):
    name = "dmd"


class TestFakeScoreDsmLoss(LossContract):
    name = "fake_score_dsm"
    trained = "fake_score"


class TestStochasticBackwardRollout(RolloutContract):
    name = "stochastic_backward"
    config: ClassVar[dict[str, Any]] = {"max_steps": 3}


class TestFixedTimestepsRollout(RolloutContract):
    name = "fixed_timesteps"


class TestTrigflowMultistepSampler(SamplerContract):
    name = "trigflow_multistep"
    config: ClassVar[dict[str, Any]] = {"steps": 3}
