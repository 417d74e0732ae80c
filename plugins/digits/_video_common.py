"""What the moving-digits metrics share: the real clips they compare with, and the two feature spaces.

Per-frame metrics read each frame's digit crop (:mod:`rcm_plugins.digits.clip_frames`) with the digit
classifier; video metrics read whole clips with the 3-D video classifier.
"""

from __future__ import annotations

from typing import Any

import attrs
from rcm_plugins.digits._common import ClassifierConfig, features
from rcm_plugins.digits.clip_frames import as_clips, digit_crops
from rcm_plugins.digits.video_classifier import DEFAULT_VIDEO_PATH, load_video_classifier, video_features_and_logits
from torch import Tensor

import rcm_registry as rr


@attrs.define
class VideoClassifierConfig:
    #: Weights of the 3-D feature network, written by ``python benchmarks/train_video_classifier.py``.
    classifier: str = DEFAULT_VIDEO_PATH
    #: Clip samples to the pixel range [-1, 1] first, as writing them out as frames would.
    clip: bool = True


def clip_dataset(dataset: Any, metric: str) -> Any:
    """The ``moving_digits`` dataset the metric compares with; one digit per clip, which the metrics read."""
    if not callable(getattr(dataset, "reference", None)) or not hasattr(dataset, "config"):
        raise rr.UserError(
            f"{metric} compares with a moving_digits dataset (data: {{use: moving_digits}}), got {dataset!r}"
        )
    if dataset.config.digits_per_clip != 1:
        raise rr.UserError(
            f"{metric} reads clips of one digit; data.digits_per_clip is {dataset.config.digits_per_clip}"
        )
    return dataset


def frame_features(config: ClassifierConfig, clips: Tensor, digit_size: int) -> tuple[Tensor, Tensor]:
    """(features, logits) of every frame's digit crop, (N·T, ·), frames of a clip consecutive."""
    return features(config, digit_crops(as_clips(clips), digit_size))


def video_features(config: VideoClassifierConfig, clips: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(features, class logits, direction logits) of clips (N, 1, T, H, W) in the video classifier."""
    x = as_clips(clips)[:, None]
    if config.clip:
        x = x.clamp(-1.0, 1.0)
    return video_features_and_logits(load_video_classifier(config.classifier), x, config.classifier)


def condition_labels(condition: dict[str, Tensor], n: int, key: str = "label") -> Tensor | None:
    value = condition.get(key)
    if value is None:
        return None
    if value.shape != (n,):
        raise rr.UserError(
            f"the moving-digits metrics need condition {{{key!r}: (N,) tensor}}, got {tuple(value.shape)}"
        )
    return value.cpu().long()


def class_labels(condition: dict[str, Tensor], n: int, metric: str) -> Tensor:
    label = condition_labels(condition, n)
    if label is None:
        raise rr.UserError(f"{metric} needs the samples' class labels: condition {{'label': (N,) tensor}}")
    return label
