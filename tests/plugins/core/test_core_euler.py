"""``euler``: the teacher ODE on analytic velocity fields, and the CFG combination."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rcm_registry as rr
from rcm_registry.engine.context import SampleContext
from rcm_registry.protocols import Condition

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


class GaussianVelocity(nn.Module):
    """The exact rectified-flow velocity E[ε − x0 | x_u = x] for data x0 ~ N(μ, s²I).

    x_u = (1 − u)x0 + uε is Gaussian with mean (1 − u)μ and variance v = (1 − u)²s² + u², so
    E[x0 | x] = μ + (1 − u)s²/v·(x − (1 − u)μ) and E[ε | x] = u/v·(x − (1 − u)μ).
    """

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        u = (timestep.double() / 1000.0)[:, None]
        x = x.double()
        var = (1 - u) ** 2 * S**2 + u**2
        centred = x - (1 - u) * MU
        return (u / var * centred - (MU + (1 - u) * S**2 / var * centred)).to(torch.float32)


class Constant(nn.Module):
    """v = a for the conditional call (label given), b for the null label; counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a, b = torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])
        return torch.where((label == 7)[:, None], b, a).expand_as(x).to(x.dtype)


def _ctx(
    registry: rr.Registry,
    net: nn.Module,
    n: int,
    schedule: str = "rectified_flow",
    condition: Condition | None = None,
    null_condition: Condition | None = None,
) -> SampleContext:
    return SampleContext(
        net=net,
        shape=(n, 2),
        condition=condition or {},
        generator=torch.Generator().manual_seed(11),
        null_condition=null_condition,
        schedule=registry.build("schedule", schedule),
    )


def test_gaussian_is_transported_exactly(registry: rr.Registry) -> None:
    sampler = registry.build("sampler", "euler", steps=100)
    x = sampler(_ctx(registry, GaussianVelocity(), 20_000)).double()
    assert x.shape == (20_000, 2)
    # standard errors: s/√n = 0.0035 for the mean, s/√(2n) = 0.0025 for the std
    torch.testing.assert_close(x.mean(0), MU, rtol=0, atol=0.015)
    torch.testing.assert_close(x.std(0), torch.full((2,), S, dtype=torch.float64), rtol=0, atol=0.015)


def _replayed_noise(n: int) -> torch.Tensor:
    return torch.randn((n, 2), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("guidance", [0.0, 1.0, 4.5])
def test_guidance_combination(registry: rr.Registry, guidance: float) -> None:
    net = Constant()
    n, steps = 6, 5
    ctx = _ctx(
        registry,
        net,
        n,
        condition={"label": torch.zeros(n, dtype=torch.long)},
        null_condition={"label": torch.full((n,), 7)},
    )
    x = registry.build("sampler", "euler", steps=steps, guidance=guidance)(ctx)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])
    v = b + guidance * (a - b)
    # the rectified-flow grid runs from u = 1 to 0: x = ε + (0 − 1)·v
    torch.testing.assert_close(x, _replayed_noise(n) - v, rtol=0, atol=1e-5)
    assert net.calls == (steps if guidance == 1.0 else 2 * steps)


def test_guidance_without_null_condition_is_conditional(registry: rr.Registry) -> None:
    net = Constant()
    ctx = _ctx(registry, net, 3, condition={"label": torch.zeros(3, dtype=torch.long)})
    x = registry.build("sampler", "euler", steps=4, guidance=3.0)(ctx)
    torch.testing.assert_close(x, _replayed_noise(3) - torch.tensor([1.0, 2.0]), rtol=0, atol=1e-5)
    assert net.calls == 4


def test_trigflow_grid_and_timesteps(registry: rr.Registry) -> None:
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            seen.append(timestep)
            return torch.ones_like(x)

    x = registry.build("sampler", "euler", steps=3)(_ctx(registry, Probe(), 2, schedule="trigflow"))
    torch.testing.assert_close(x, _replayed_noise(2) - math.pi / 2, rtol=0, atol=1e-6)
    want = [math.pi / 2, math.pi / 3, math.pi / 6]
    assert [round(float(t[0]), 6) for t in seen] == [round(v, 6) for v in want]
    assert all(t.shape == (2,) and t.dtype == torch.float32 for t in seen)


def test_needs_a_schedule(registry: rr.Registry) -> None:
    ctx = SampleContext(net=Constant(), shape=(2, 2), condition={}, generator=torch.Generator())
    with pytest.raises(rr.UserError, match="needs a schedule"):
        registry.build("sampler", "euler")(ctx)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [({"steps": 0}, "steps: must be > 0"), ({"guidance": "x"}, "guidance: expected float"), ({"step": 3}, "step")],
)
def test_bad_configs_are_reported(registry: rr.Registry, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("sampler", "euler", **config)
    assert fragment in str(info.value)
