"""Digits metrics: the statistics on cases with known answers, and the components on real data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rcm_plugins.digits.classifier import DigitClassifier, save_classifier
from rcm_plugins.digits.features import frechet_distance, knn_radii, mean_pairwise_distance, precision_recall

import rcm_registry as rr


def _gaussian(n: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn((n, mean.shape[0]), generator=g, dtype=torch.float64)


def test_frechet_distance_of_identical_sets_is_zero() -> None:
    x = _gaussian(500, torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), 0)
    assert abs(frechet_distance(x, x)) < 1e-9


def test_frechet_distance_matches_the_closed_form() -> None:
    # Diagonal Gaussians: FD = |μ_a − μ_b|² + Σ_i (s_a,i − s_b,i)². Large samples bring the estimate close.
    d = 4
    mean_a, mean_b = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    std_a, std_b = torch.ones(d, dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    a, b = _gaussian(200_000, mean_a, std_a, 1), _gaussian(200_000, mean_b, std_b, 2)
    exact = float((mean_a - mean_b).square().sum() + (std_a - std_b).square().sum())
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.01)
    # With the sample moments themselves the formula is exact (non-diagonal covariances too).
    g = torch.Generator().manual_seed(3)
    mix = torch.randn((d, d), generator=g, dtype=torch.float64)
    c = a @ mix
    mu_a, mu_c = a.mean(0), c.mean(0)
    cov_a, cov_c = torch.cov(a.T), torch.cov(c.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root = vectors @ torch.diag(values.sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root @ cov_c @ root).clamp(min=0).sqrt().sum()
    want = float((mu_a - mu_c).square().sum() + cov_a.trace() + cov_c.trace() - 2 * cross)
    assert frechet_distance(a, c) == pytest.approx(want, rel=1e-9)


def test_shift_only_gives_the_squared_shift() -> None:
    x = _gaussian(1000, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 4)
    shift = torch.tensor([3.0, 0.0, -4.0], dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, abs=1e-8)


def test_precision_recall_identical_and_disjoint() -> None:
    x = _gaussian(400, torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64), 5)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    far = x + 100.0
    assert precision_recall(x, far, k=3) == (0.0, 0.0)


def test_precision_recall_detects_a_collapsed_generator() -> None:
    # Samples that cover a quarter of the data: precision stays high, recall drops.
    real = _gaussian(2000, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 6)
    quarter = real[(real[:, 0] > 0) & (real[:, 1] > 0)]
    fake = quarter[torch.randint(len(quarter), (2000,), generator=torch.Generator().manual_seed(7))]
    fake = fake + 1e-3 * torch.randn(fake.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.95 and 0.15 < recall < 0.4


def test_knn_radii_and_pairwise_distance() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(x, 1), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(x, 2), torch.tensor([3.0, 2.0, 3.0, 6.0], dtype=torch.float64))
    pairs = [1, 3, 7, 2, 6, 4]
    assert mean_pairwise_distance(x) == pytest.approx(sum(pairs) / len(pairs))
    assert mean_pairwise_distance(x[:1]) == 0.0


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (random) classifier: the metric plumbing does not depend on the weights' quality."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    save_classifier(DigitClassifier(), path, accuracy=math.nan)
    return path


def test_metric_components_on_the_data_itself(classifier_path: Path) -> None:
    reg = rr.registry()
    ds = reg.build("dataset", "digits")
    n = 500
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))[:n]
    samples, condition = ds.x[pick], {"label": ds.y[pick]}
    out: dict[str, float] = {}
    for name in ("digits_fd", "digits_accuracy", "digits_precision_recall", "digits_diversity"):
        out.update(reg.build("metric", name, classifier=str(classifier_path))(samples, condition, ds))
    assert set(out) == {"fd", "accuracy", "precision", "recall", "diversity", "diversity_min"}
    assert 0 <= out["fd"] < 1.0 and 0 <= out["accuracy"] <= 1
    # Two different halves of one distribution: k = 3 balls cover most, not all, of the other half.
    assert out["precision"] > 0.8 and out["recall"] > 0.8
    assert 0.8 < out["diversity"] < 1.2
    # All samples one image: no diversity, low recall, large distance.
    same = ds.x[pick[:1]].expand(n, -1, -1, -1, -1)
    collapsed = reg.build("metric", "digits_diversity", classifier=str(classifier_path))(same, condition, ds)
    assert collapsed["diversity"] < 1e-4  # cdist rounding
    pr = reg.build("metric", "digits_precision_recall", classifier=str(classifier_path))(same, condition, ds)
    assert pr["recall"] < 0.1


def test_missing_classifier_is_a_user_error(tmp_path: Path) -> None:
    reg = rr.registry()
    ds = reg.build("dataset", "digits")
    metric = reg.build("metric", "digits_fd", classifier=str(tmp_path / "none.safetensors"))
    with pytest.raises(rr.UserError, match="train_digit_classifier"):
        metric(ds.x[:10], {"label": ds.y[:10]}, ds)


def test_samples_are_clipped_to_the_pixel_range_unless_asked_not_to(classifier_path: Path) -> None:
    reg = rr.registry()
    ds = reg.build("dataset", "digits")
    loud = ds.x[:300] * 3.0  # over-saturated: most pixels far outside [-1, 1]
    condition = {"label": ds.y[:300]}
    clipped = reg.build("metric", "digits_fd", classifier=str(classifier_path))
    raw = reg.build("metric", "digits_fd", classifier=str(classifier_path), clip=False)
    same = clipped(loud.clamp(-1, 1), condition, ds)["fd"]
    assert clipped(loud, condition, ds)["fd"] == pytest.approx(same, rel=1e-12)
    assert raw(loud, condition, ds)["fd"] > same
