"""The digits plugin's dataset and metrics pass their kinds' contracts (the metrics on an untrained classifier)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from rcm_plugins.digits.classifier import DigitClassifier, save_classifier

from rcm_registry.testing import DatasetContract, MetricContract


class TestDigitsDataset(DatasetContract):
    name = "digits"
    config: ClassVar[dict[str, Any]] = {"split": "train", "upsample": 2}


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights: the metric contract does not depend on the classifier's quality."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier") / "classifier.safetensors"
    save_classifier(DigitClassifier(), path, accuracy=math.nan)
    return path


class DigitsMetricContract(MetricContract):
    """A digits metric against the ``digits`` test split, measured with the random classifier."""

    dataset_section: ClassVar[dict[str, Any]] = {"use": "digits", "split": "test"}

    @pytest.fixture(autouse=True)
    def _classifier(self, classifier_path: Path) -> None:
        self.classifier = str(classifier_path)

    def make(self, **overrides: Any) -> Any:
        return super().make(classifier=self.classifier, **overrides)


class TestDigitsFrechetMetric(DigitsMetricContract):
    name = "digits_fd"


class TestDigitsAccuracyMetric(DigitsMetricContract):
    name = "digits_accuracy"


class TestDigitsPrecisionRecallMetric(DigitsMetricContract):
    name = "digits_precision_recall"


class TestDigitsDiversityMetric(DigitsMetricContract):
    name = "digits_diversity"
