"""``gaussian_mixture_2d``: geometry, unit-variance scaling, labels and determinism."""

from __future__ import annotations

import math

import pytest
import torch

import rcm_registry as rr
from rcm_registry.protocols import Batch, Dataset

N = 100_000


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _draw(dataset: Dataset, n: int = N, seed: int = 0) -> Batch:
    return dataset.next_batch(n, torch.Generator().manual_seed(seed))


def test_ring_geometry_and_unit_variance(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", layout="ring", modes=8, radius=2.0, std=0.1)
    scale = math.sqrt(2.0**2 / 2 + 0.1**2)  # per-coordinate std of the raw mixture: r²/2 + s²
    assert ds.std == pytest.approx(0.1 / scale, rel=1e-12)
    assert ds.centers.shape == (8, 2) and ds.centers.dtype == torch.float64
    angles = [2 * math.pi * k / 8 for k in range(8)]
    want = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64) * 2.0 / scale
    torch.testing.assert_close(ds.centers, want, rtol=0, atol=1e-14)
    x = _draw(ds).x0
    assert x.shape == (N, 2) and x.dtype == torch.float32 and ds.sample_shape == (2,)
    assert x.double().mean(0).abs().max().item() < 0.01
    torch.testing.assert_close(x.double().var(0), torch.ones(2, dtype=torch.float64), rtol=0, atol=0.01)


def test_grid_geometry_and_unit_variance(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", layout="grid", grid_size=5, spacing=1.0, std=0.05)
    scale = math.sqrt(1.0 * (5**2 - 1) / 12 + 0.05**2)  # discrete uniform on 5 points, spacing 1
    assert ds.centers.shape == (25, 2)
    assert ds.std == pytest.approx(0.05 / scale, rel=1e-12)
    axis = [(i - 2) / scale for i in range(5)]
    torch.testing.assert_close(ds.centers[7], torch.tensor([axis[1], axis[2]], dtype=torch.float64))
    x = _draw(ds).x0.double()
    torch.testing.assert_close(x.var(0), torch.ones(2, dtype=torch.float64), rtol=0, atol=0.01)
    # each point lies near a centre: distances to the nearest one follow a 2-D Rayleigh(std)
    d = torch.cdist(x, ds.centers).min(1).values
    assert (d.square().mean() / (2 * ds.std**2)).item() == pytest.approx(1.0, abs=0.02)


def test_unnormalised_keeps_units(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", modes=4, radius=3.0, std=0.2, normalize=False)
    assert ds.std == 0.2
    torch.testing.assert_close(ds.centers.norm(dim=1), torch.full((4,), 3.0, dtype=torch.float64))


def test_labels_and_null_condition(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", modes=8, labels=True)
    batch = _draw(ds, n=4000)
    label = batch.condition["label"]
    assert label.dtype == torch.long and set(label.tolist()) == set(range(8))
    nearest = torch.cdist(batch.x0.double(), ds.centers).argmin(1)
    assert torch.equal(nearest, label)  # well separated modes
    assert torch.equal(batch.null_condition["label"], torch.full((4000,), 8))
    counts = torch.bincount(label, minlength=8)
    assert bool((counts > 0.8 * 4000 / 8).all()) and bool((counts < 1.2 * 4000 / 8).all())

    cond, null = ds.conditions(20, torch.Generator().manual_seed(0))
    assert cond["label"].tolist() == [i % 8 for i in range(20)]
    assert null is not None and null["label"].tolist() == [8] * 20

    plain = registry.build("dataset", "gaussian_mixture_2d")
    batch = _draw(plain, n=10)
    assert batch.condition == {} and batch.null_condition is None
    assert plain.conditions(5, torch.Generator()) == ({}, None)


def test_deterministic_given_generator_and_stateless(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "gaussian_mixture_2d", labels=True)
    a, b, c = _draw(ds, 64, seed=3), _draw(ds, 64, seed=3), _draw(ds, 64, seed=4)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.condition["label"], b.condition["label"])
    assert not torch.equal(a.x0, c.x0)
    assert ds.state_dict() == {}
    ds.load_state_dict({})
    with pytest.raises(ValueError):
        ds.load_state_dict({"position": 3})


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"std": 0.0}, "std: must be > 0"),
        ({"std": -1.0}, "std: must be > 0"),
        ({"layout": "spiral"}, "layout: expected one of 'ring', 'grid'"),
        ({"modes": 1}, "modes: must be in"),
        ({"grid_size": 0}, "grid_size: must be in"),
        ({"radius": -2.0}, "radius: must be > 0"),
        ({"labels": "yes"}, "labels: expected a boolean"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("dataset", "gaussian_mixture_2d", **config)
    assert fragment in str(info.value)
