"""What the digits metrics share: their config fields and the sample/reference features they compare."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.digits.classifier import DEFAULT_PATH, features_and_logits, load_classifier
from torch import Tensor

import rcm_registry as rr
from rcm_registry.protocols import Condition


@attrs.define
class ClassifierConfig:
    #: Weights of the feature network, written by ``python benchmarks/train_digit_classifier.py``.
    classifier: str = DEFAULT_PATH
    #: Clip samples to the pixel range [-1, 1] first, as writing them out as images would (FID is taken on
    #: saved images too). Without it, a few over-saturated pixels dominate the feature statistics.
    clip: bool = True


def reference_set(dataset: Any) -> tuple[Tensor, Tensor]:
    """The dataset's images (N, 1, 1, H, W) and labels (N,): the real distribution samples are compared with."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise rr.UserError(
            f"the digits metrics compare with a dataset holding images .x and labels .y, got {dataset!r}"
        )
    return x, y


def sample_labels(condition: Condition, n: int) -> Tensor:
    label = condition.get("label")
    if label is None or label.shape != (n,):
        raise rr.UserError("the digits metrics need the samples' class labels: condition {'label': (N,) tensor}")
    return label.cpu().long()


def features(config: ClassifierConfig, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features, logits) of the configured classifier; non-finite values are mapped to the background.

    A diverged sample (NaN) would poison every statistic; replacing it by a blank image keeps it
    counted as a failure (wrong class, far from the data) without breaking the linear algebra.
    """
    x = x.detach().float().cpu()
    x = torch.where(torch.isfinite(x), x, torch.full_like(x, -1.0))
    if config.clip:
        x = x.clamp(-1.0, 1.0)
    return features_and_logits(load_classifier(config.classifier), x)
