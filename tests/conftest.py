"""The suite runs under the test extra (``pip install -e ".[test]"``): a test dependency that is missing or
too old stops the run with one message naming it, rather than the tests that need it being skipped.

``RCM_TEST_PARTIAL_ENV=1`` lifts the check for a machine that runs only part of the suite without the extra
(the GPU tests on an accelerator that has torch and triton but not diffusers): a test whose dependency is
missing then fails to import, it is still not skipped."""

from __future__ import annotations

import os
from importlib import metadata

import pytest
from packaging.requirements import Requirement


def missing_test_requirements() -> list[str]:
    """The requirements of rcm-registry's ``test`` extra that this environment does not satisfy."""
    problems = []
    for line in metadata.requires("rcm-registry") or []:
        req = Requirement(line)
        in_extra = req.marker is not None and req.marker.evaluate({"extra": "test"})
        if not in_extra or req.marker.evaluate({"extra": ""}):  # only what the test extra adds
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} (not installed)")
            continue
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}{req.specifier} (found {version})")
    return problems


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("RCM_TEST_PARTIAL_ENV") == "1":
        return
    problems = missing_test_requirements()
    if problems:
        raise pytest.UsageError(
            'the tests need the test extra, pip install -e ".[test]"; missing: ' + ", ".join(problems)
        )
