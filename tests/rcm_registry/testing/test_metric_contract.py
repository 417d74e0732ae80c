"""MetricContract: a correct metric passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor

from rcm_registry.protocols import Condition, Dataset
from rcm_registry.testing import MetricContract


class MeanNorm:
    """A correct metric: the mean distance of the samples from the origin."""

    def score(self, samples: Tensor) -> Any:
        return float(samples.norm(dim=1).mean())

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, Any]:
        return {"mean_norm": self.score(samples)}


class TensorValue(MeanNorm):
    def score(self, samples: Tensor) -> Any:
        return samples.norm(dim=1).mean()


class InfiniteForOutliers(MeanNorm):
    """Infinite as soon as one sample lies outside the unit-variance bulk."""

    def score(self, samples: Tensor) -> Any:
        return float("inf") if bool((samples.abs() > 1.0).any()) else super().score(samples)


class RandomSubset(MeanNorm):
    """Scores a random half of the samples, drawn from the global RNG."""

    def score(self, samples: Tensor) -> Any:
        return super().score(samples[torch.randperm(samples.shape[0])[: samples.shape[0] // 2]])


class KeyedByMaximum(MeanNorm):
    """Names its value after the data."""

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, Any]:
        return {f"mean_norm_{int((samples[:, 0] > 0).sum())}_right": self.score(samples)}


class ClampsInPlace(MeanNorm):
    def score(self, samples: Tensor) -> Any:
        return super().score(samples.clamp_(-1.0, 1.0))


BROKEN: list[tuple[type[MeanNorm], set[str]]] = [
    (TensorValue, {"test_returns_finite_floats_by_name"}),
    (InfiniteForOutliers, {"test_returns_finite_floats_by_name"}),
    (RandomSubset, {"test_same_inputs_same_scores_whatever_the_global_rng"}),
    (KeyedByMaximum, {"test_keys_do_not_depend_on_the_samples"}),
    (ClampsInPlace, {"test_leaves_its_inputs_alone"}),
]


def checks(metric: type[MeanNorm]) -> set[str]:
    def make(self: object, **overrides: Any) -> MeanNorm:
        return metric()

    return failing_checks(MetricContract, make=make)


def test_a_correct_metric_passes() -> None:
    assert checks(MeanNorm) == set()


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_metric_fails_its_checks(broken: type[MeanNorm], fails: set[str]) -> None:
    assert checks(broken) == fails


def test_every_check_fails_for_some_broken_metric() -> None:
    assert set().union(*(fails for _, fails in BROKEN)) == checks_of(MetricContract)
