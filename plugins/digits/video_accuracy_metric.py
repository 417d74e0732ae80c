"""``moving_digits_accuracy``: does the video classifier read each clip as the class (and direction) asked for?"""

from __future__ import annotations

import attrs
from rcm_plugins.digits._video_common import (
    VideoClassifierConfig,
    class_labels,
    clip_dataset,
    condition_labels,
    video_features,
)
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition

NAME = "moving_digits_accuracy"


@attrs.define
class VideoAccuracyConfig(VideoClassifierConfig):
    pass


class VideoAccuracy:
    """``accuracy``: share of clips whose predicted class is the condition label; with a ``direction``
    condition also ``direction_accuracy``, the share whose predicted initial direction is the asked one."""

    def __init__(self, config: VideoAccuracyConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        clip_dataset(dataset, NAME)
        n = samples.shape[0]
        label = class_labels(condition, n, NAME)
        _, classes, directions = video_features(self.config, samples)
        out = {"accuracy": float((classes.argmax(dim=1) == label).double().mean())}
        direction = condition_labels(condition, n, "direction")
        if direction is not None:
            out["direction_accuracy"] = float((directions.argmax(dim=1) == direction).double().mean())
        return out


COMPONENT = rr.Component(kind="metric", name=NAME, factory=VideoAccuracy, config=VideoAccuracyConfig)
