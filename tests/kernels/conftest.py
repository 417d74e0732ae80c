"""Kernel tests run on the GPU when there is one, else in Triton's CPU interpreter (see interpreter_fallback)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Loaded by path: the tests folders are not packages, and this module is shared with tests/plugins/attention.
_spec = importlib.util.spec_from_file_location(
    "rcm_interpreter_fallback", Path(__file__).with_name("interpreter_fallback.py")
)
assert _spec is not None and _spec.loader is not None
fallback = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fallback)
fallback.prepare()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if "gpu" in pyfuncitem.keywords or not fallback.needs_child():
        return None
    return fallback.run_in_child(pyfuncitem, Path(__file__).parent)
