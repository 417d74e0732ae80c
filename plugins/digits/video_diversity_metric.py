"""``moving_digits_diversity``: within-class spread of the clips in video features, relative to the data's."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._video_common import (
    VideoClassifierConfig,
    class_labels,
    clip_dataset,
    reference_video_features,
    video_features,
)
from rcm_plugins.digits.features import within_class_diversity
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition

NAME = "moving_digits_diversity"


@attrs.define
class VideoDiversityConfig(VideoClassifierConfig):
    pass


class VideoDiversity:
    """As ``digits_diversity``, on clips: per class, the samples' mean pairwise feature distance over the
    reference clips'. Keys: ``diversity`` (1: as varied as the data; near 0: one clip per class, i.e. the
    same digit, place and motion every time), ``diversity_min``."""

    def __init__(self, config: VideoDiversityConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        label = class_labels(condition, samples.shape[0], NAME)
        data = clip_dataset(dataset, NAME)
        _, real_labels = data.reference()
        fake_features = video_features(self.config, samples)[0]
        real_features = reference_video_features(self.config, data)[0]
        return within_class_diversity(fake_features, label, real_features, real_labels["label"])


COMPONENT = rr.Component(kind="metric", name=NAME, factory=VideoDiversity, config=VideoDiversityConfig)
