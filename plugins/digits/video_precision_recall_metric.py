"""``moving_digits_precision_recall``: k-NN manifold precision and recall of clips in video features."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.digits._video_common import (
    VideoClassifierConfig,
    clip_dataset,
    reference_video_features,
    video_features,
)
from rcm_plugins.digits.features import precision_recall
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition

NAME = "moving_digits_precision_recall"


@attrs.define
class VideoPrecisionRecallConfig(VideoClassifierConfig):
    #: The k of the k-th-nearest-neighbour ball radii (the paper's default is 3).
    k: int = attrs.field(default=3, validator=schema.positive)
    #: Seeds the draw of the real subset.
    seed: int = attrs.field(default=0, validator=schema.non_negative)


class VideoPrecisionRecall:
    """Precision (clips on the data manifold) and recall (data on the clips' manifold), as ``digits_precision_recall``.

    The real set is a seeded subset of the reference clips as large as the sample set (all of them when
    there are more samples). Keys: ``precision``, ``recall``.
    """

    def __init__(self, config: VideoPrecisionRecallConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: object) -> dict[str, float]:
        all_real = reference_video_features(self.config, clip_dataset(dataset, NAME))[0]
        n = min(samples.shape[0], all_real.shape[0])
        pick = torch.randperm(all_real.shape[0], generator=torch.Generator().manual_seed(self.config.seed))[:n]
        real_features = all_real[pick]
        fake_features = video_features(self.config, samples)[0]
        precision, recall = precision_recall(real_features, fake_features, self.config.k)
        return {"precision": precision, "recall": recall}


COMPONENT = rr.Component(kind="metric", name=NAME, factory=VideoPrecisionRecall, config=VideoPrecisionRecallConfig)
