"""How pytest collects the contract classes: the bases never, their subclasses once each."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MODULE = """
from rcm_registry.testing import TimeSamplerContract
from rcm_registry.testing import TimeSamplerContract as TestImportedUnderATestName


class TestLognormal(TimeSamplerContract):
    name = "lognormal"


class UniformContract(TimeSamplerContract):
    '''An intermediate base that adds a check: not collected itself.'''

    name = "uniform"

    def test_mean_is_the_middle(self):
        import math, torch

        t = self.make()(20000, generator=torch.Generator().manual_seed(0))
        assert abs(t.mean().item() - math.pi / 4) < 0.01


class TestUniform(UniformContract):
    pass


class TestSwitchedOff(TimeSamplerContract):
    __test__ = False
    name = "lognormal"
"""


def test_bases_are_not_collected_and_subclasses_are(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_samplers=MODULE)
    # A child process: torch does not survive pytester's in-process runs unloading modules.
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    passed = {line.split(" ")[0] for line in result.outlines if line.endswith("%]") and " PASSED " in line}
    for check in ("test_float64_of_shape_n", "test_draws_on_the_generator_device"):
        assert f"test_samplers.py::TestLognormal::{check}" in passed
        assert f"test_samplers.py::TestUniform::{check}" in passed
    assert "test_samplers.py::TestUniform::test_mean_is_the_middle" in passed
    result.assert_outcomes(passed=5 + 5 + 1)  # nothing of the bases, the alias or the switched-off class
