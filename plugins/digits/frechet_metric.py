"""``digits_fd``: Fréchet distance between samples and the digits in the classifier's feature space."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._common import ClassifierConfig, features, reference_set
from rcm_plugins.digits.features import frechet_distance
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition


@attrs.define
class DigitsFrechetConfig(ClassifierConfig):
    pass


class DigitsFrechet:
    """FID-style Fréchet distance of classifier features, samples vs every image of the dataset. Key: ``fd``.

    Like FID it is biased upwards for small sample counts; compare values computed with equal counts.
    """

    def __init__(self, config: DigitsFrechetConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        x_real, _ = reference_set(dataset)
        fake, _ = features(self.config, samples)
        real, _ = features(self.config, x_real)
        return {"fd": frechet_distance(fake, real)}


COMPONENT = rr.Component(kind="metric", name="digits_fd", factory=DigitsFrechet, config=DigitsFrechetConfig)
