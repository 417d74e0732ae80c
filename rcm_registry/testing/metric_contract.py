"""What every ``metric`` must do (``rcm_registry.protocols.Metric``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from rcm_registry.protocols import Condition, Dataset
from rcm_registry.testing.contract import ComponentContract
from rcm_registry.testing.fixtures import build


class MetricContract(ComponentContract):
    """Scoring samples (and their conditions) against a dataset.

    Checked: a non-empty ``dict[str, float]`` of finite Python floats; the same dict for the same
    inputs whatever the global RNG's state; the same keys for other samples; the samples and condition
    tensors left as they were.

    The inputs: :meth:`dataset` (default: the registered dataset :attr:`dataset_section`) and
    :meth:`samples` (default: a batch of the dataset, slightly perturbed, with its condition, float32 on
    the CPU as ``rcm sample`` hands them over).
    """

    kind = "metric"
    #: The dataset the metric compares with, as a recipe section.
    dataset_section: ClassVar[dict[str, Any]] = {"use": "gaussian_mixture_2d", "labels": True, "classes": 4}
    #: How many samples each check scores.
    num_samples: ClassVar[int] = 64

    def dataset(self) -> Dataset:
        return build("dataset", self.dataset_section)

    def samples(self, dataset: Dataset, seed: int) -> tuple[Tensor, Condition]:
        """``num_samples`` samples near the data and their condition."""
        g = torch.Generator().manual_seed(seed)
        batch = dataset.next_batch(self.num_samples, g)
        noise = torch.randn(batch.x0.shape, generator=g, dtype=torch.float64)
        return (batch.x0.double() + 0.05 * noise).float(), batch.condition

    def test_returns_finite_floats_by_name(self) -> None:
        dataset = self.dataset()
        out = self.make()(*self.samples(dataset, 0), dataset)
        assert isinstance(out, dict) and out, f"a metric returns a non-empty dict, got {out!r}"
        for key, value in out.items():
            assert isinstance(key, str), f"metric name {key!r} is not a string"
            assert type(value) is float, f"{key} = {value!r} is {type(value).__name__}, not float"
            assert math.isfinite(value), f"{key} = {value}"

    def test_same_inputs_same_scores_whatever_the_global_rng(self) -> None:
        dataset = self.dataset()
        samples, condition = self.samples(dataset, 1)
        metric = self.make()
        torch.manual_seed(1)
        a = metric(samples, condition, dataset)
        torch.manual_seed(2)
        b = metric(samples, condition, dataset)
        assert a == b, f"the same samples scored {a} and {b}"

    def test_keys_do_not_depend_on_the_samples(self) -> None:
        dataset = self.dataset()
        metric = self.make()
        a = metric(*self.samples(dataset, 2), dataset)
        b = metric(*self.samples(dataset, 3), dataset)
        assert a.keys() == b.keys(), f"two sample sets gave the keys {sorted(a)} and {sorted(b)}"

    def test_leaves_its_inputs_alone(self) -> None:
        dataset = self.dataset()
        samples, condition = self.samples(dataset, 4)
        kept, kept_condition = samples.clone(), {k: v.clone() for k, v in condition.items()}
        self.make()(samples, condition, dataset)
        assert torch.equal(samples, kept), "the metric changed the samples it was given"
        assert condition.keys() == kept_condition.keys(), "the metric changed the condition's keys"
        changed = [k for k, v in kept_condition.items() if not torch.equal(condition[k], v)]
        assert not changed, f"the metric changed the condition tensors under {changed}"
