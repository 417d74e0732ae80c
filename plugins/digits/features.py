"""Distribution statistics in a feature space (float64): Fréchet distance, k-NN precision/recall, spread."""

from __future__ import annotations

import torch
from torch import Tensor


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.double()
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(c: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(c)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a^½ Σ_b Σ_a^½)^½) of Gaussians fitted to the rows of a and b.

    tr((Σ_a Σ_b)^½) is taken as the trace of the symmetric square root of Σ_a^½ Σ_b Σ_a^½ (the same
    eigenvalues), which keeps everything in symmetric eigendecompositions and never goes complex.
    """
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (the point itself excluded)."""
    if x.shape[0] <= k:
        raise ValueError(f"k = {k} needs more than {k} points, got {x.shape[0]}")
    d = torch.cdist(x.double(), x.double())
    return d.kthvalue(k + 1, dim=1).values  # the smallest entry of each row is the point itself (0)


def coverage_of(manifold: Tensor, radii: Tensor, queries: Tensor, chunk: int = 4096) -> Tensor:
    """Per query: True if it lies in some ball B(manifold_i, radii_i)."""
    inside = []
    for part in queries.double().split(chunk):
        inside.append((torch.cdist(part, manifold.double()) <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls as manifold estimates.

    precision: share of fake points inside the real manifold (union of balls around the real points,
    each with the radius to its k-th nearest real neighbour); recall: share of real points inside the
    fake manifold, built the same way from the fake points.
    """
    precision = coverage_of(real, knn_radii(real, k), fake).double().mean()
    recall = coverage_of(fake, knn_radii(fake, k), real).double().mean()
    return float(precision), float(recall)


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of rows (0 for fewer than two rows)."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x.double(), x.double())
    return float(d.sum() / (n * (n - 1)))


def within_class_diversity(fake: Tensor, labels: Tensor, real: Tensor, real_labels: Tensor) -> dict[str, float]:
    """Within-class spread of the samples relative to that of the data, in a feature space.

    Per class c: mean pairwise distance of the fake rows labelled c over the same for the real rows of c;
    ``diversity`` is the mean over classes with at least two rows on both sides (1: as varied as the data;
    near 0: mode collapse), ``diversity_min`` the least varied class (both NaN when no class qualifies).
    """
    ratios = []
    for c in labels.unique().tolist():
        mine, theirs = fake[labels == c], real[real_labels == c]
        if mine.shape[0] < 2 or theirs.shape[0] < 2:
            continue
        ratios.append(mean_pairwise_distance(mine) / max(mean_pairwise_distance(theirs), 1e-12))
    if not ratios:
        return {"diversity": float("nan"), "diversity_min": float("nan")}
    return {"diversity": sum(ratios) / len(ratios), "diversity_min": min(ratios)}
