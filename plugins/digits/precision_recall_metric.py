"""``digits_precision_recall``: k-NN manifold precision and recall (Kynkäänniemi et al., 2019)."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.digits._common import ClassifierConfig, features, reference_set
from rcm_plugins.digits.features import precision_recall
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition


@attrs.define
class DigitsPrecisionRecallConfig(ClassifierConfig):
    #: The k of the k-th-nearest-neighbour ball radii (the paper's default is 3).
    k: int = attrs.field(default=3, validator=schema.positive)
    #: Seeds the draw of the real subset.
    seed: int = attrs.field(default=0, validator=schema.non_negative)


class DigitsPrecisionRecall:
    """Precision (samples on the data manifold) and recall (data on the samples' manifold).

    Both sets must be the same size for the two manifold estimates to be comparable, so the real set is
    a seeded random subset of the dataset with as many images as there are samples (all of it when
    there are more samples). Keys: ``precision``, ``recall``.
    """

    def __init__(self, config: DigitsPrecisionRecallConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        x_real, _ = reference_set(dataset)
        n = min(samples.shape[0], x_real.shape[0])
        pick = torch.randperm(x_real.shape[0], generator=torch.Generator().manual_seed(self.config.seed))[:n]
        real, _ = features(self.config, x_real[pick])
        fake, _ = features(self.config, samples)
        precision, recall = precision_recall(real, fake, self.config.k)
        return {"precision": precision, "recall": recall}


COMPONENT = rr.Component(
    kind="metric", name="digits_precision_recall", factory=DigitsPrecisionRecall, config=DigitsPrecisionRecallConfig
)
