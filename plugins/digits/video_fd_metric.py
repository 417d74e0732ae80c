"""``moving_digits_video_fd``: Fréchet distance of whole clips in the video classifier's features."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._video_common import (
    VideoClassifierConfig,
    clip_dataset,
    reference_video_features,
    video_features,
)
from rcm_plugins.digits.features import frechet_distance
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition

NAME = "moving_digits_video_fd"


@attrs.define
class VideoFrechetConfig(VideoClassifierConfig):
    pass


class VideoFrechet:
    """FVD-style distance of clip features, samples vs the dataset's reference clips. Key: ``video_fd``.

    The features see appearance and motion together (class and direction are what the network was
    trained on). Like FID, biased upwards for small sample counts: compare equal counts.
    """

    def __init__(self, config: VideoFrechetConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        real_features = reference_video_features(self.config, clip_dataset(dataset, NAME))[0]
        fake_features = video_features(self.config, samples)[0]
        return {"video_fd": frechet_distance(fake_features, real_features)}


COMPONENT = rr.Component(kind="metric", name=NAME, factory=VideoFrechet, config=VideoFrechetConfig)
