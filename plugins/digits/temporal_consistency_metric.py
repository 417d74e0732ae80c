"""``moving_digits_temporal_consistency``: does a clip show the same digit in every frame, and the asked one?"""

from __future__ import annotations

import attrs
from rcm_plugins.digits._common import ClassifierConfig
from rcm_plugins.digits._video_common import class_labels, clip_dataset, frame_features
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition

NAME = "moving_digits_temporal_consistency"


@attrs.define
class TemporalConsistencyConfig(ClassifierConfig):
    pass


class TemporalConsistency:
    """Per-frame digit-classifier predictions of each clip's digit crops.

    ``temporal_consistency``: share of clips whose frames are all read as one class (a digit that morphs
    into another mid-clip fails); ``frame_accuracy``: share of frames read as the conditioned class.
    """

    def __init__(self, config: TemporalConsistencyConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        data = clip_dataset(dataset, NAME)
        n, frames = samples.shape[0], samples.shape[2]
        label = class_labels(condition, n, NAME)
        _, logits = frame_features(self.config, samples, data.config.digit_size)
        predicted = logits.argmax(dim=1).view(n, frames)
        return {
            "temporal_consistency": float((predicted == predicted[:, :1]).all(dim=1).double().mean()),
            "frame_accuracy": float((predicted == label[:, None]).double().mean()),
        }


COMPONENT = rr.Component(kind="metric", name=NAME, factory=TemporalConsistency, config=TemporalConsistencyConfig)
