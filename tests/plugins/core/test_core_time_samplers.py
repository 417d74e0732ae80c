"""Time samplers: distributions by a Kolmogorov–Smirnov statistic against the CDFs written out here."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import rcm_registry as rr

N = 200_000
#: The KS statistic's 0.1% critical value is 1.95/√n; with fixed seeds the check is deterministic.
KS_LIMIT = 1.95 / math.sqrt(N)


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _ks(samples: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> float:
    x = samples.sort().values
    n = x.shape[0]
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    lower = f - torch.arange(0, n, dtype=torch.float64) / n
    return max(upper.max().item(), lower.max().item())


def _phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.special.erf(z / math.sqrt(2)))


def _draw(registry: rr.Registry, name: str, seed: int = 0, **config: float) -> torch.Tensor:
    sampler = registry.build("time_sampler", name, **config)
    t = sampler(N, generator=torch.Generator().manual_seed(seed))
    assert t.shape == (N,) and t.dtype == torch.float64
    assert bool((t > 0).all()) and bool((t < math.pi / 2).all())
    return t


@pytest.mark.parametrize(("mean", "std"), [(-0.8, 1.6), (0.7, 1.0)])
def test_lognormal(registry: rr.Registry, mean: float, std: float) -> None:
    t = _draw(registry, "lognormal", mean=mean, std=std)
    # P(t ≤ x) = P(ln σ ≤ ln tan x) = Φ((ln tan x − mean)/std)
    assert _ks(t, lambda x: _phi((torch.log(torch.tan(x)) - mean) / std)) < KS_LIMIT


@pytest.mark.parametrize("shift", [1.0, 5.0, 0.5])
def test_uniform_shift(registry: rr.Registry, shift: float) -> None:
    t = _draw(registry, "uniform_shift", shift=shift)

    def cdf(x: torch.Tensor) -> torch.Tensor:
        v = torch.sin(x) / (torch.cos(x) + torch.sin(x))  # shifted rf time of t = x
        return v / (shift - (shift - 1) * v)  # inverse of u ↦ shift·u/(1 + (shift − 1)u), u ~ U(0, 1)

    assert _ks(t, cdf) < KS_LIMIT
    if shift == 5.0:  # shifting towards noise: median rf time 5·0.5/3 = 5/6
        median_u = torch.sin(t.median()) / (torch.cos(t.median()) + torch.sin(t.median()))
        assert median_u.item() == pytest.approx(5 / 6, abs=5e-3)


@pytest.mark.parametrize(("low", "high"), [(0.0, math.pi / 2), (0.2, 1.1)])
def test_uniform(registry: rr.Registry, low: float, high: float) -> None:
    t = _draw(registry, "uniform", low=low, high=high)
    assert _ks(t, lambda x: (x - low) / (high - low)) < KS_LIMIT
    assert t.min().item() >= low and t.max().item() <= high


def test_extreme_draws_are_clamped_inside(registry: rr.Registry) -> None:
    t = _draw(registry, "lognormal", mean=0.0, std=50.0)
    assert t.min().item() == pytest.approx(1e-4) and t.max().item() == pytest.approx(math.pi / 2 - 1e-4)
    assert math.pi / 2 - t.max().item() > 0


def test_seeded_and_reproducible(registry: rr.Registry) -> None:
    sampler = registry.build("time_sampler", "lognormal")
    a = sampler(16, generator=torch.Generator().manual_seed(3))
    b = sampler(16, generator=torch.Generator().manual_seed(3))
    c = sampler(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sampler(4).shape == (4,)  # no generator: the global RNG


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("lognormal", {"std": 0.0}, "std: must be > 0"),
        ("lognormal", {"mean": "a"}, "mean: expected float"),
        ("uniform_shift", {"shift": -2.0}, "shift: must be > 0"),
        ("uniform", {"low": 1.0, "high": 0.5}, "low (1.0) must be < high (0.5)"),
        ("uniform", {"high": 3.0}, "high: must be in"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, name: str, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("time_sampler", name, **config)
    assert fragment in str(info.value)
