"""What every ``time_sampler`` must do (``rcm_registry.protocols.TimeSampler``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from rcm_registry.testing.contract import ComponentContract


def _devices() -> list[torch.device]:
    """Where generators can live here: the CPU, and every CUDA device there is."""
    return [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


class TimeSamplerContract(ComponentContract):
    """Draws of TrigFlow times: float64 of shape (n,) strictly inside (0, π/2), from the given generator only.

    Checked: shape and dtype for several n (and without a generator); every value of many draws inside
    (0, π/2); equal draws for equally seeded generators whatever the global RNG's state; different
    draws for different seeds and for consecutive calls on one generator; the result on the
    generator's device (every device this machine has).
    """

    kind = "time_sampler"

    def sampler(self) -> Any:
        return self.make()

    def test_float64_of_shape_n(self) -> None:
        s = self.sampler()
        for n in (1, 7, 64):
            t = s(n, generator=torch.Generator().manual_seed(n))
            assert isinstance(t, torch.Tensor) and t.shape == (n,), f"{n} draws gave {getattr(t, 'shape', t)}"
            assert t.dtype == torch.float64, f"draws are {t.dtype}, not float64"
        t = s(5)
        assert t.shape == (5,) and t.dtype == torch.float64, "without a generator: the global RNG, same shape"

    def test_values_strictly_inside_zero_half_pi(self) -> None:
        s = self.sampler()
        for seed in range(3):
            t = s(4096, generator=torch.Generator().manual_seed(seed))
            low, high = t.min().item(), t.max().item()
            assert bool(torch.isfinite(t).all()), "draws must be finite"
            assert 0.0 < low and high < math.pi / 2, f"draws span [{low}, {high}], not inside (0, π/2)"

    def test_same_seed_same_draws_whatever_the_global_rng(self) -> None:
        s = self.sampler()
        torch.manual_seed(1)
        a = s(32, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(2)
        b = s(32, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b), "equally seeded generators gave different draws: randomness not from the generator"

    def test_different_seeds_and_calls_give_different_draws(self) -> None:
        s = self.sampler()
        a = s(32, generator=torch.Generator().manual_seed(5))
        b = s(32, generator=torch.Generator().manual_seed(6))
        assert not torch.equal(a, b), "different seeds gave the same draws"
        g = torch.Generator().manual_seed(5)
        first, second = s(32, generator=g), s(32, generator=g)
        assert not torch.equal(first, second), "two calls on one generator gave the same draws"

    def test_draws_on_the_generator_device(self) -> None:
        s = self.sampler()
        for device in _devices():
            t = s(8, generator=torch.Generator(device=device).manual_seed(0))
            assert t.device == device, f"a generator on {device} gave draws on {t.device}"
