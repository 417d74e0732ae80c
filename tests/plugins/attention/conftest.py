"""The triton_jvp backend tests run on the GPU when there is one, else in Triton's CPU interpreter.

The mechanism is shared with tests/kernels (interpreter_fallback.py there).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Loaded by path: the tests folders are not packages.
_path = Path(__file__).parents[2] / "kernels" / "interpreter_fallback.py"
_spec = importlib.util.spec_from_file_location("rcm_interpreter_fallback_attention", _path)
assert _spec is not None and _spec.loader is not None
fallback = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fallback)
fallback.prepare()

# The modules that run the triton_jvp backend on CPU tensors.
_TRITON_TESTS = {Path(__file__).with_name(name) for name in ("test_triton_jvp.py", "test_attention_contracts.py")}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.path not in _TRITON_TESTS or "gpu" in pyfuncitem.keywords or not fallback.needs_child():
        return None
    return fallback.run_in_child(pyfuncitem, pyfuncitem.path.parent)
