"""What the moving-digits metrics share: the real clips they compare with, and the two feature spaces.

Per-frame metrics read each frame's digit crop (:mod:`rcm_plugins.digits.clip_frames`) with the digit
classifier; video metrics read whole clips with the 3-D video classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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
    x = as_clips(clips)
    if config.clip:  # before cropping and pooling, as for a saved frame
        x = x.clamp(-1.0, 1.0)
    return features(config, digit_crops(x, digit_size))


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


# The reference clips' features, per feature network: every metric of a row (and every row of a table)
# compares with the same clips, and they are most of the work. The entry keeps the clips it was made
# from, so a new reference set (another dataset) is never matched by a recycled id.
_REFERENCE: dict[tuple[Any, ...], tuple[Tensor, Any]] = {}


def _cached(key: tuple[Any, ...], real: Tensor, compute: Callable[[], Any]) -> Any:
    hit = _REFERENCE.get(key)
    if hit is not None and hit[0] is real:
        return hit[1]
    if len(_REFERENCE) >= 8:
        _REFERENCE.pop(next(iter(_REFERENCE)))
    value = compute()
    _REFERENCE[key] = (real, value)
    return value


def _weights_key(path: str) -> tuple[str, int]:
    p = Path(path)
    return (str(p.resolve()), p.stat().st_mtime_ns if p.is_file() else -1)


def reference_frame_features(config: ClassifierConfig, dataset: Any) -> tuple[Tensor, Tensor]:
    """:func:`frame_features` of the dataset's reference clips."""
    real, _ = dataset.reference()
    size = dataset.config.digit_size
    key = ("frames", id(real), _weights_key(config.classifier), config.clip, size)
    return _cached(key, real, lambda: frame_features(config, real, size))


def reference_video_features(config: VideoClassifierConfig, dataset: Any) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`video_features` of the dataset's reference clips."""
    real, _ = dataset.reference()
    key = ("video", id(real), _weights_key(config.classifier), config.clip)
    return _cached(key, real, lambda: video_features(config, real))
