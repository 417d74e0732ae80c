"""``high_quality_rate``: the share of samples that land on some mode."""

from __future__ import annotations

import attrs
from rcm_plugins.core._modes import mode_geometry, nearest_mode
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition, Dataset


@attrs.define
class HighQualityRateConfig:
    within_std: float = attrs.field(default=3.0, validator=[schema.positive, schema.finite])


class HighQualityRate:
    """Share of samples x with min_k ‖x − c_k‖₂ ≤ within_std·std.

    For exact mixture samples in 2-D this is 1 − exp(−within_std²/2) (0.9889 at 3 std), the
    ceiling a perfect sampler reaches on well-separated modes.
    """

    def __init__(self, config: HighQualityRateConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, float]:
        centers, std = mode_geometry(dataset, "high_quality_rate")
        distance, _ = nearest_mode(samples, centers)
        return {"high_quality_rate": float((distance <= self.config.within_std * std).double().mean())}

    def __repr__(self) -> str:
        return f"HighQualityRate(within_std={self.config.within_std})"


COMPONENT = rr.Component(kind="metric", name="high_quality_rate", factory=HighQualityRate, config=HighQualityRateConfig)
