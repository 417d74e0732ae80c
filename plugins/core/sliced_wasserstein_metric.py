"""``sliced_wasserstein``: sliced Wasserstein distance from the samples to fresh data."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Condition, Dataset


@attrs.define
class SlicedWassersteinConfig:
    projections: int = attrs.field(default=256, validator=schema.positive)
    #: Number of fresh dataset samples to compare with (none: as many as there are samples).
    reference_samples: int | None = attrs.field(default=None, validator=schema.positive)
    #: Seeds both the reference draw and the projection directions.
    seed: int = attrs.field(default=0, validator=schema.non_negative)
    p: int = attrs.field(default=2, validator=schema.positive)


def wasserstein_1d_pp(a: Tensor, b: Tensor, p: int) -> Tensor:
    """W_p^p between the empirical measures of each row of ``a`` (P, n) and ``b`` (P, m).

    W_p^p = ∫₀¹ |F_a⁻¹(s) − F_b⁻¹(s)|^p ds, exact: both quantile functions are step functions with
    breaks at i/n and j/m, so the integral is a sum over the merged breaks.
    """
    n, m = a.shape[1], b.shape[1]
    a, b = a.sort(dim=1).values, b.sort(dim=1).values
    dtype, device = a.dtype, a.device
    right = torch.cat([torch.arange(1, n + 1, dtype=dtype, device=device) / n,
                       torch.arange(1, m + 1, dtype=dtype, device=device) / m]).unique()  # fmt: skip
    left = torch.cat([right.new_zeros(1), right[:-1]])
    middle = (left + right) / 2
    ia = (torch.ceil(middle * n) - 1).long().clamp(0, n - 1)
    ib = (torch.ceil(middle * m) - 1).long().clamp(0, m - 1)
    return ((a[:, ia] - b[:, ib]).abs().pow(p) * (right - left)).sum(dim=1)


class SlicedWasserstein:
    """SW_p = (E_θ W_p^p(θᵀX, θᵀY))^(1/p) over ``projections`` seeded random unit directions θ.

    X are the samples; Y are ``reference_samples`` fresh draws from the dataset (its marginal, via
    ``next_batch`` with a generator seeded by ``seed``). Each 1-D W_p is exact for the empirical
    measures (:func:`wasserstein_1d_pp`). Key: ``sliced_wasserstein``.
    """

    def __init__(self, config: SlicedWassersteinConfig) -> None:
        self.config = config

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, float]:
        c = self.config
        points = samples.detach().to("cpu", torch.float64).reshape(samples.shape[0], -1)
        generator = torch.Generator().manual_seed(c.seed)
        m = c.reference_samples or points.shape[0]
        reference = dataset.next_batch(m, generator).x0.detach().to("cpu", torch.float64).reshape(m, -1)
        directions = torch.randn((c.projections, points.shape[1]), generator=generator, dtype=torch.float64)
        directions = directions / directions.norm(dim=1, keepdim=True)
        pp = wasserstein_1d_pp(directions @ points.T, directions @ reference.T, c.p)
        return {"sliced_wasserstein": float(pp.mean() ** (1.0 / c.p))}

    def __repr__(self) -> str:
        return f"SlicedWasserstein({self.config})"


COMPONENT = rr.Component(
    kind="metric", name="sliced_wasserstein", factory=SlicedWasserstein, config=SlicedWassersteinConfig
)
