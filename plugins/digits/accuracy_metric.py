"""``digits_accuracy``: how often the classifier reads a sample as the digit it was conditioned on."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._common import ClassifierConfig, features, sample_labels
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition


@attrs.define
class DigitsAccuracyConfig(ClassifierConfig):
    pass


class DigitsAccuracy:
    """Share of samples whose classifier prediction equals their condition label. Key: ``accuracy``."""

    def __init__(self, config: DigitsAccuracyConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        label = sample_labels(condition, samples.shape[0])
        _, logits = features(self.config, samples)
        return {"accuracy": float((logits.argmax(dim=1) == label).double().mean())}


COMPONENT = rr.Component(kind="metric", name="digits_accuracy", factory=DigitsAccuracy, config=DigitsAccuracyConfig)
