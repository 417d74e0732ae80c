"""Metrics on constructed point sets whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from rcm_plugins.core.sliced_wasserstein_metric import wasserstein_1d_pp

import rcm_registry as rr
from rcm_registry.protocols import Batch

K, R, STD = 4, 2.0, 0.1  # unnormalised ring of 4: centres (±2, 0), (0, ±2)


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


@pytest.fixture(scope="module")
def ring(registry: rr.Registry) -> object:
    return registry.build("dataset", "gaussian_mixture_2d", modes=K, radius=R, std=STD, normalize=False)


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    """10 points 0.2 from mode 0, 10 points 0.29 from mode 1, 10 points 0.35 from mode 2 (outside
    3 std), 1 point on mode 3, 2 points far from everything; labels as the mode they were put at."""
    centre = [torch.tensor([math.cos(math.pi * k / 2), math.sin(math.pi * k / 2)]) * R for k in range(K)]
    rows, labels = [], []
    for k, offset, count in [(0, 0.2, 10), (1, 0.29, 10), (2, 0.35, 10), (3, 0.0, 1)]:
        for i in range(count):
            angle = 2 * math.pi * i / count
            rows.append(centre[k] + offset * torch.tensor([math.cos(angle), math.sin(angle)]))
            labels.append(k)
    rows += [torch.tensor([0.0, 0.0]), torch.tensor([5.0, 5.0])]
    labels += [0, 1]
    return torch.stack(rows).float(), torch.tensor(labels)


def test_high_quality_rate(registry: rr.Registry, ring: object) -> None:
    points, _ = _points()
    out = registry.build("metric", "high_quality_rate")(points, {}, ring)
    assert out == {"high_quality_rate": pytest.approx(21 / 33)}
    wide = registry.build("metric", "high_quality_rate", within_std=4.0)(points, {}, ring)
    assert wide["high_quality_rate"] == pytest.approx(31 / 33)


def test_mode_coverage(registry: rr.Registry, ring: object) -> None:
    points, labels = _points()
    # 33 samples, 4 modes: threshold·33/4 samples needed; mode 2's points are all outside 3 std
    loose = registry.build("metric", "mode_coverage", threshold=0.1)(points, {}, ring)  # needs 0.825
    assert loose == {"mode_coverage": pytest.approx(3 / 4)}
    strict = registry.build("metric", "mode_coverage", threshold=0.5)(points, {}, ring)  # needs 4.125
    assert strict["mode_coverage"] == pytest.approx(2 / 4)
    wide = registry.build("metric", "mode_coverage", within_std=4.0)(points, {}, ring)
    assert wide["mode_coverage"] == pytest.approx(1.0)
    # class-conditioned: a sample counts when it lies at its own label's mode
    labelled = registry.build("metric", "mode_coverage")(points, {"label": labels}, ring)
    assert labelled["class_accuracy"] == pytest.approx(21 / 33)
    swapped = registry.build("metric", "mode_coverage")(points, {"label": (labels + 1) % K}, ring)
    assert swapped["class_accuracy"] == 0.0
    null_only = registry.build("metric", "mode_coverage")(points, {"label": torch.full((33,), K)}, ring)
    assert "class_accuracy" not in null_only


def test_metrics_on_true_samples(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", layout="grid", grid_size=5)
    x = ds.next_batch(50_000, torch.Generator().manual_seed(0)).x0
    hq = registry.build("metric", "high_quality_rate")(x, {}, ds)["high_quality_rate"]
    assert hq == pytest.approx(1 - math.exp(-4.5), abs=0.003)  # P(‖z‖ ≤ 3) for a 2-D standard normal
    assert registry.build("metric", "mode_coverage")(x, {}, ds)["mode_coverage"] == 1.0
    collapsed = ds.centers[:1].float().expand(1000, 2)
    assert registry.build("metric", "mode_coverage")(collapsed, {}, ds)["mode_coverage"] == pytest.approx(1 / 25)


def test_wasserstein_1d_unequal_sizes() -> None:
    # quantile functions: a = 0 on (0, ½], 1 on (½, 1]; b = 0, ½, 1 on thirds. They differ by ½ on (⅓, ⅔].
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64)
    assert wasserstein_1d_pp(a, b, 1).item() == pytest.approx(1 / 6, rel=1e-12)
    assert wasserstein_1d_pp(a, b, 2).item() == pytest.approx(1 / 12, rel=1e-12)
    # equal sizes: differences of the sorted values (1, 2, 3) − (0, 1, 5)
    c = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.float64)
    assert wasserstein_1d_pp(c, d, 2).item() == pytest.approx((1 + 1 + 4) / 3, rel=1e-12)


class Fixed:
    """A dataset whose 'fresh samples' are always the same points."""

    sample_shape = (2,)

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        assert batch_size == self.points.shape[0]
        return Batch(x0=self.points)


def test_sliced_wasserstein_of_a_translation(registry: rr.Registry) -> None:
    g = torch.Generator().manual_seed(5)
    reference = torch.randn((200, 2), generator=g, dtype=torch.float64)
    delta = torch.tensor([0.3, -0.4], dtype=torch.float64)
    # a translation by δ moves every 1-D projection by θ·δ, so SW₂² = E_θ (θ·δ)² = |δ|²/2 in 2-D
    metric = registry.build("metric", "sliced_wasserstein", projections=4000, reference_samples=200)
    sw = metric(reference + delta, {}, Fixed(reference))["sliced_wasserstein"]
    assert sw == pytest.approx(0.5 / math.sqrt(2), rel=0.02)  # Monte Carlo over directions: ~0.6%
    assert metric(reference, {}, Fixed(reference))["sliced_wasserstein"] == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_against_the_dataset(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d")
    metric = registry.build("metric", "sliced_wasserstein", seed=3)
    x = ds.next_batch(4000, torch.Generator().manual_seed(99)).x0
    near = metric(x, {}, ds)["sliced_wasserstein"]
    assert near == metric(x, {}, ds)["sliced_wasserstein"]  # seeded
    # two independent draws of 4000 differ mostly through the per-mode counts (±√500 of 500)
    assert near < 0.1
    assert metric(0.5 * x, {}, ds)["sliced_wasserstein"] > 5 * near


def test_metric_needs_mixture_geometry(registry: rr.Registry) -> None:
    with pytest.raises(TypeError, match="centers"):
        registry.build("metric", "high_quality_rate")(torch.zeros(3, 2), {}, Fixed(torch.zeros(3, 2)))


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("mode_coverage", {"threshold": 0.0}, "threshold: must be > 0"),
        ("mode_coverage", {"within_std": -3.0}, "within_std: must be > 0"),
        ("high_quality_rate", {"within_std": 0}, "within_std: must be > 0"),
        ("sliced_wasserstein", {"projections": 0}, "projections: must be > 0"),
        ("sliced_wasserstein", {"reference_samples": -5}, "reference_samples: must be > 0"),
        ("sliced_wasserstein", {"seed": -1}, "seed: must be >= 0"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, name: str, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("metric", name, **config)
    assert fragment in str(info.value)
