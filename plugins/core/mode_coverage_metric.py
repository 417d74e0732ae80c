"""``mode_coverage``: how many of the mixture's modes the samples reach."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._modes import mode_geometry, nearest_mode
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition, Dataset


@attrs.define
class ModeCoverageConfig:
    #: A mode is covered when it holds at least threshold·n/K of the n samples (K modes).
    threshold: float = attrs.field(default=0.1, validator=[schema.positive, schema.finite])
    #: A sample is at a mode when its distance to the centre is at most within_std·std.
    within_std: float = attrs.field(default=3.0, validator=[schema.positive, schema.finite])


class ModeCoverage:
    """Share of modes that receive at least ``threshold·n/K`` samples within ``within_std·std``.

    Each sample is assigned to its nearest centre c_k if ‖x − c_k‖₂ ≤ within_std·std (else to no
    mode); with n_k samples assigned to mode k, ``mode_coverage = #{k : n_k ≥ threshold·n/K} / K``.
    When the condition carries ``label`` (class-conditioned sampling) the result also has
    ``class_accuracy``: the share of samples with a real label y lying within within_std·std of
    some mode of class y (the dataset's ``mode_class``; without it, mode y itself).
    """

    def __init__(self, config: ModeCoverageConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, float]:
        centers, std = mode_geometry(dataset, "mode_coverage")
        radius = self.config.within_std * std
        k = centers.shape[0]
        n = samples.shape[0]
        distance, index = nearest_mode(samples, centers)
        counts = torch.bincount(index[distance <= radius], minlength=k)
        out = {"mode_coverage": float((counts >= self.config.threshold * n / k).double().mean())}
        label = condition.get("label")
        if label is not None:
            label = label.detach().to("cpu", torch.long).reshape(-1)
            mode_class = getattr(dataset, "mode_class", None)
            mode_class = torch.arange(k) if mode_class is None else mode_class.to("cpu", torch.long)
            real = label <= int(mode_class.max())
            if bool(real.any()):
                points = samples.detach().to("cpu", torch.float64).reshape(n, -1)[real]
                # (n_real, K): is sample i within the radius of mode m, and is m of sample i's class?
                near = torch.cdist(points, centers) <= radius
                mine = mode_class.unsqueeze(0) == label[real].unsqueeze(1)
                out["class_accuracy"] = float((near & mine).any(dim=1).double().mean())
        return out

    def __repr__(self) -> str:
        return f"ModeCoverage(threshold={self.config.threshold}, within_std={self.config.within_std})"


COMPONENT = rr.Component(kind="metric", name="mode_coverage", factory=ModeCoverage, config=ModeCoverageConfig)
