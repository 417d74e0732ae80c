"""``gaussian_mixture_2d``: a mixture of equal-weight isotropic Gaussians in the plane."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Batch, Condition, SampleShapes


@attrs.define
class GaussianMixture2dConfig:
    #: ``ring``: ``modes`` centres evenly on a circle; ``grid``: ``grid_size × grid_size`` centres.
    layout: Literal["ring", "grid"] = "ring"
    modes: int = attrs.field(default=8, validator=schema.in_range(2, 1_000_000))
    grid_size: int = attrs.field(default=5, validator=schema.in_range(2, 1000))
    #: Ring radius and grid spacing, in the units of ``std`` (before normalisation).
    radius: float = attrs.field(default=2.0, validator=[schema.positive, schema.finite])
    spacing: float = attrs.field(default=1.0, validator=[schema.positive, schema.finite])
    #: Per-mode standard deviation (per coordinate), in the same units as radius and spacing.
    std: float = attrs.field(default=0.1, validator=[schema.positive, schema.finite])
    #: Rescale centres and std together so that each coordinate of the data has variance 1.
    normalize: bool = True
    #: Condition on a class label: ``{"label": LongTensor}``; the null label is the number of classes.
    labels: bool = False
    #: Number of classes (0: one class per mode). With C classes, mode k belongs to class k mod C, so
    #: each class is itself multi-modal (on a grid with C = grid_size: one column per class) and a
    #: one-step sampler must do more than predict the class mean.
    classes: int = attrs.field(default=0, validator=schema.non_negative)

    def __attrs_post_init__(self) -> None:
        modes = self.modes if self.layout == "ring" else self.grid_size**2
        if self.classes > modes:
            raise ValueError(f"classes ({self.classes}) cannot exceed the number of modes ({modes})")

    def sample_shapes(self) -> SampleShapes:
        """Points (2,); with labels, a ``label`` of ``classes`` classes (one per mode when 0)."""
        if not self.labels:
            return SampleShapes(x0=(2,))
        classes = self.classes or (self.modes if self.layout == "ring" else self.grid_size**2)
        return SampleShapes(x0=(2,), condition={"label": ()}, classes={"label": classes})


class GaussianMixture2d:
    """Equal-weight mixture of isotropic 2-D Gaussians on a ring or a grid, scaled to unit variance.

    Density Σ_k N(c_k, s²I)/K.

    Centres: ring ``c_k = radius·(cos 2πk/K, sin 2πk/K)``; grid ``spacing·(i − (n−1)/2, j − (n−1)/2)``
    (row-major, k = i·n + j). With ``normalize`` both centres and std are divided by
    ``sqrt(Σ_k |c_k − c̄|²/(2K) + std²)``, the per-coordinate standard deviation of the mixture, so
    each coordinate has mean 0 and variance 1 (exactly for both layouts, whose centre spread is the
    same along x and y). ``centers`` (K, 2) float64 and ``std`` are the normalised values.

    Stateless: every batch is drawn from the engine's generator (mode index, then noise).
    Evaluation conditions cycle through the modes (k = i mod K) and carry each mode's class, so
    each mode's class is asked for ⌊n/K⌋ or ⌈n/K⌉ times.
    """

    sample_shape: tuple[int, ...] = (2,)

    def __init__(self, config: GaussianMixture2dConfig) -> None:
        self.config = config
        centers = self._raw_centers(config)
        std = config.std
        if config.normalize:
            spread = (centers - centers.mean(dim=0)).square().sum(dim=1).mean() / 2.0
            scale = math.sqrt(float(spread) + std**2)
            centers, std = centers / scale, std / scale
        self.centers: Tensor = centers
        self.std: float = std
        self.labels = config.labels
        self.num_classes = config.classes or centers.shape[0]
        #: The class of each mode, (K,) long.
        self.mode_class: Tensor = torch.arange(centers.shape[0]) % self.num_classes

    @staticmethod
    def _raw_centers(config: GaussianMixture2dConfig) -> Tensor:
        if config.layout == "ring":
            angle = 2.0 * math.pi * torch.arange(config.modes, dtype=torch.float64) / config.modes
            return config.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        n = config.grid_size
        axis = config.spacing * (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)

    @property
    def num_modes(self) -> int:
        return self.centers.shape[0]

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        k = torch.randint(self.num_modes, (batch_size,), generator=generator, device=device)
        noise = torch.randn((batch_size, 2), generator=generator, device=device, dtype=torch.float64)
        x0 = (self.centers.to(device)[k] + self.std * noise).float()
        condition, null = self._condition(k)
        return Batch(x0=x0, condition=condition, null_condition=null)

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        return self._condition(torch.arange(n, device=generator.device) % self.num_modes)

    def _condition(self, k: Tensor) -> tuple[Condition, Condition | None]:
        if not self.labels:
            return {}, None
        label = self.mode_class.to(k.device)[k].long()
        return {"label": label}, {"label": torch.full_like(label, self.num_classes)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"gaussian_mixture_2d keeps no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"GaussianMixture2d(modes={self.num_modes}, std={self.std:.4g}, labels={self.labels})"


COMPONENT = rr.Component(
    kind="dataset", name="gaussian_mixture_2d", factory=GaussianMixture2d, config=GaussianMixture2dConfig
)
