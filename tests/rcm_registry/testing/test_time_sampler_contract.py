"""TimeSamplerContract: a correct sampler passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor

from rcm_registry.testing import TimeSamplerContract
from rcm_registry.testing import time_sampler_contract as contract

Sampler = Callable[..., Tensor]


def uniform(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A correct sampler: U(0.01, π/2 − 0.01) on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    return 0.01 + (math.pi / 2 - 0.02) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def float32(n: int, generator: torch.Generator | None = None) -> Tensor:
    return uniform(n, generator).float()


def touches_zero(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Unclamped: the first draw is exactly 0 (data), where losses divide by sin t."""
    t = uniform(n, generator)
    t[0] = 0.0
    return t


def global_rng(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Ignores the generator: torch's global RNG."""
    return uniform(n, None)


def reseeded(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Seeds its own generator on every call: the same draws whatever it is given."""
    return uniform(n, torch.Generator().manual_seed(0))


def on_the_cpu(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draws from the generator, then moves them to the CPU whatever the generator's device."""
    return uniform(n, generator).cpu()


def checks(sampler: Sampler) -> set[str]:
    return failing_checks(TimeSamplerContract, make=lambda self, **_: sampler)


BROKEN: list[tuple[Sampler, set[str]]] = [
    (float32, {"test_float64_of_shape_n"}),
    (touches_zero, {"test_values_strictly_inside_zero_half_pi"}),
    (global_rng, {"test_same_seed_same_draws_whatever_the_global_rng"}),
    (reseeded, {"test_different_seeds_and_calls_give_different_draws"}),
]


def test_a_correct_sampler_and_the_built_in_ones_pass() -> None:
    assert checks(uniform) == set()
    for name in ("lognormal", "uniform_shift", "uniform"):
        assert failing_checks(TimeSamplerContract, name=name) == set(), name


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_sampler_fails_its_checks(broken: Sampler, fails: set[str]) -> None:
    assert checks(broken) == fails


def test_draws_on_another_device_than_the_generator_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU-only machine every generator is on the CPU: stand in a sampler that moves its draws."""
    monkeypatch.setattr(contract, "_devices", lambda: [torch.device("cpu")])

    def elsewhere(n: int, generator: torch.Generator | None = None) -> Tensor:
        t = uniform(n, generator)
        return t.to("meta") if n == 8 else t  # the device check draws 8

    assert checks(elsewhere) == {"test_draws_on_the_generator_device"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draws_on_the_cpu_for_a_cuda_generator_fail() -> None:
    assert checks(on_the_cpu) == {"test_draws_on_the_generator_device"}


def test_every_check_fails_for_some_broken_sampler() -> None:
    covered = set().union(*(fails for _, fails in BROKEN)) | {"test_draws_on_the_generator_device"}
    assert covered == checks_of(TimeSamplerContract)
