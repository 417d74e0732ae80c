"""EMA components ``power`` (EDM2) and ``constant``: the exponent, β sequence, state and buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rcm_registry as rr


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _cubic(gamma: float, rate: float) -> float:
    k = rate**-2
    return gamma**3 + 7 * gamma**2 + (16 - k) * gamma + (12 - k)


def _bisect_largest_root(rate: float) -> float:
    # (γ + 2)²(γ + 3) − σ⁻²(γ + 1) is negative at 0 (σ < 1/√12) and positive at σ⁻²: one root in between,
    # and the cubic is increasing beyond it, so it is the largest one.
    lo, hi = 0.0, rate**-2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _cubic(mid, rate) < 0 else (lo, mid)
    return (lo + hi) / 2


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # running stats and num_batches_tracked: buffers, copied not averaged


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2, 0.28])
def test_power_gamma_is_the_cubic_root(registry: rr.Registry, rate: float) -> None:
    gamma = registry.build("ema", "power", rate=rate).gamma
    assert abs(_cubic(gamma, rate)) < 1e-9 * rate**-2
    assert gamma == pytest.approx(_bisect_largest_root(rate), rel=1e-10)
    # EDM2's definition of the rate: σ_rel² = (γ + 1) / ((γ + 2)²(γ + 3))
    assert ((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) ** 0.5 == pytest.approx(rate, rel=1e-10)


def test_power_gamma_for_default_rate(registry: rr.Registry) -> None:
    assert registry.build("ema", "power").gamma == pytest.approx(6.9372, abs=1e-4)


def _run_updates(averager: object, module: Small, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    history = []
    for i in range(steps):
        with torch.no_grad():
            module.lin.weight.copy_(torch.randn(module.lin.weight.shape, generator=g))
            module.norm.running_mean.copy_(torch.randn(2, generator=g))
        history.append(module.lin.weight.detach().double().clone())
        averager.update(module, i)  # type: ignore[attr-defined]
    return history


def test_power_beta_sequence_matches_hand_loop(registry: rr.Registry) -> None:
    ema = registry.build("ema", "power", rate=0.1)
    module = Small()
    averager = ema(module)
    history = _run_updates(averager, module, steps=40, seed=0)
    gamma = _bisect_largest_root(0.1)
    hand = torch.zeros_like(history[0])
    for i, theta in enumerate(history):
        beta = (1 - 1 / (i + 1)) ** (gamma + 1)
        hand = beta * hand + (1 - beta) * theta
    state = averager.state_dict()
    assert state["lin.weight"].dtype == torch.float32
    torch.testing.assert_close(state["lin.weight"].double(), hand, rtol=1e-5, atol=1e-6)
    # buffers are copied as they are
    assert torch.equal(state["norm.running_mean"], module.norm.running_mean)
    assert state["norm.num_batches_tracked"].dtype == torch.long


def test_power_first_update_takes_the_weights(registry: rr.Registry) -> None:
    module = Small()
    averager = registry.build("ema", "power")(module)
    with torch.no_grad():
        module.lin.weight.add_(1.0)
    averager.update(module, 0)  # β_0 = 0
    assert torch.equal(averager.state_dict()["lin.weight"], module.lin.weight.detach())


def test_constant_decay(registry: rr.Registry) -> None:
    module = Small()
    start = module.lin.weight.detach().double().clone()
    averager = registry.build("ema", "constant", decay=0.9)(module)
    history = _run_updates(averager, module, steps=10, seed=1)
    hand = start
    for theta in history:
        hand = 0.9 * hand + 0.1 * theta
    torch.testing.assert_close(averager.state_dict()["lin.weight"].double(), hand, rtol=1e-5, atol=1e-6)


def test_state_round_trip_and_copy_to(registry: rr.Registry) -> None:
    ema = registry.build("ema", "power")
    module = Small().double()
    averager = ema(module)
    _run_updates(averager, module, steps=5, seed=2)
    state = averager.state_dict()
    assert set(state) == set(module.state_dict())
    assert all(v.dtype == torch.float32 for k, v in state.items() if "num_batches" not in k)

    fresh = ema(Small().double())
    fresh.load_state_dict(state)
    target = Small().double()
    fresh.copy_to(target)
    for name, value in target.state_dict().items():
        assert value.dtype == module.state_dict()[name].dtype
        torch.testing.assert_close(value, state[name].to(value.dtype), rtol=0, atol=0)
    # the engine loads EMA states straight into a network
    Small().load_state_dict(state)

    with pytest.raises(KeyError, match="missing"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "lin.bias"})


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("power", {"rate": 0.0}, "rate: must be in (0.0, 0.288"),
        ("power", {"rate": 0.3}, "rate: must be in"),
        ("power", {"rate": "fast"}, "rate: expected float"),
        ("constant", {"decay": 1.0}, "decay: must be in [0.0, 1.0)"),
        ("constant", {"decay": -0.1}, "decay: must be in"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, name: str, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("ema", name, **config)
    assert fragment in str(info.value)
