"""``digits_diversity``: within-class spread of the samples relative to that of the data."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._common import ClassifierConfig, features, reference_set, sample_labels
from rcm_plugins.digits.features import within_class_diversity
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition


@attrs.define
class DigitsDiversityConfig(ClassifierConfig):
    pass


class DigitsDiversity:
    """Within-class spread of samples relative to the data's (1: as varied; near 0: mode collapse).

    Per class c: mean pairwise feature distance of the samples asked for c, divided by the same for the
    dataset's images of class c; ``diversity`` is the mean over classes with at least two samples
    (1: as varied as the data; near 0: mode collapse). ``diversity_min`` is the least varied class.
    """

    def __init__(self, config: DigitsDiversityConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        label = sample_labels(condition, samples.shape[0])
        x_real, y_real = reference_set(dataset)
        fake, _ = features(self.config, samples)
        real, _ = features(self.config, x_real)
        return within_class_diversity(fake, label, real, y_real)


COMPONENT = rr.Component(kind="metric", name="digits_diversity", factory=DigitsDiversity, config=DigitsDiversityConfig)
