"""``moving_digits_motion``: how far each digit's track is from constant velocity with elastic bounces."""

from __future__ import annotations

import attrs
from rcm_plugins.digits._video_common import clip_dataset
from rcm_plugins.digits.clip_frames import as_clips, centroids
from rcm_plugins.digits.clip_motion import motion_errors
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition

NAME = "moving_digits_motion"


@attrs.define
class MotionConfig:
    #: Fastest motion (pixels per frame) the fitted track may have (default: twice the data's top speed).
    max_speed: float | None = attrs.field(default=None, validator=schema.positive)


class MotionError:
    """RMS distance (pixels) of the digit's intensity-centroid track from its best-fit bouncing track.

    Per clip, each axis is fitted by ``a + tri(q0 + v·t)``: constant velocity v, folded back at the walls
    the digit's box (of the dataset's digit size) bounces off, with the centroid's offset a inside the box
    free. ``motion_error`` is the mean over clips, ``motion_error_max`` the worst clip. Real clips are not
    at 0: each frame places the digit at the nearest whole pixel (about 0.25 px for the default data).
    """

    def __init__(self, config: MotionConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        data = clip_dataset(dataset, NAME)
        cfg = data.config
        max_speed = self.config.max_speed or 2.0 * max(cfg.speed[1], 0.5)
        errors = motion_errors(centroids(as_clips(samples)), cfg.canvas - cfg.digit_size, max_speed)
        return {"motion_error": float(errors.mean()), "motion_error_max": float(errors.max())}


COMPONENT = rr.Component(kind="metric", name=NAME, factory=MotionError, config=MotionConfig)
