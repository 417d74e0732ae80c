"""Nearest-mode geometry shared by the 2-D mixture metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def mode_geometry(dataset: Any, metric: str) -> tuple[Tensor, float]:
    """The dataset's mode centres (K, D) as float64 on the CPU, and its per-mode std."""
    centers = getattr(dataset, "centers", None)
    std = getattr(dataset, "std", None)
    if not isinstance(centers, Tensor) or not isinstance(std, (int, float)):
        raise TypeError(
            f"metric {metric} needs a dataset with mode centres and a per-mode std "
            f"(attributes `centers` and `std`, as gaussian_mixture_2d has); got {type(dataset).__name__}"
        )
    return centers.detach().to("cpu", torch.float64), float(std)


def nearest_mode(samples: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """(distance, index) of each sample's nearest centre, Euclidean, in float64."""
    points = samples.detach().to("cpu", torch.float64).reshape(samples.shape[0], -1)
    distance = torch.cdist(points, centers)
    return distance.min(dim=1)
