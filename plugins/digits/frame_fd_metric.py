"""``moving_digits_frame_fd``: Fréchet distance of the frames' digits in the digit classifier's features."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._common import ClassifierConfig
from rcm_plugins.digits._video_common import clip_dataset, frame_features, reference_frame_features
from rcm_plugins.digits.features import frechet_distance
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition

NAME = "moving_digits_frame_fd"


@attrs.define
class FrameFrechetConfig(ClassifierConfig):
    pass


class FrameFrechet:
    """FID-style distance of every frame's digit crop, samples vs the reference clips. Key: ``frame_fd``.

    It scores how each frame looks as a digit, whatever the motion; the video metrics score the clips.
    """

    def __init__(self, config: FrameFrechetConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        data = clip_dataset(dataset, NAME)
        fake_features, _ = frame_features(self.config, samples, data.config.digit_size)
        real_features, _ = reference_frame_features(self.config, data)
        return {"frame_fd": frechet_distance(fake_features, real_features)}


COMPONENT = rr.Component(kind="metric", name=NAME, factory=FrameFrechet, config=FrameFrechetConfig)
