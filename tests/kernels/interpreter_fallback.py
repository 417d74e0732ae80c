"""Run Triton kernel tests on a CPU-only machine through Triton's interpreter, robustly.

Triton decides between compiling and interpreting when ``triton`` and each ``@triton.jit`` function
are defined, from ``TRITON_INTERPRET``; it cannot be switched afterwards in one process. The conftests
that load this module set the variable as early as they can, which covers ``pytest tests/kernels``
and any run where nothing imported triton before them. If something did (another test module, a
torch feature), the kernel tests of that directory are run once in a child pytest with the variable
set, and each test here reports its own outcome from the child's JUnit XML: passing, failing with the
child's message, or skipped. No test is silently dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

_results: dict[str, tuple[str, str]] | None = None


def prepare() -> None:
    """Call at conftest import: switch the interpreter on unless there is a GPU or triton is imported."""
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"


def needs_child() -> bool:
    if torch.cuda.is_available() or os.environ.get("RCM_KERNEL_TEST_CHILD") == "1":
        return False
    from rcm_kernels.triton_common import interpreter_active

    return not interpreter_active()


def _nodeid_of(case: ET.Element, root: Path) -> str:
    # JUnit names: classname "tests.kernels.test_x" (the module's dotted path, followed by ".TestClass" for a
    # test method: the module is the longest prefix that is a file) and name "test_y[param]".
    parts = case.get("classname", "").split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (root / path).is_file():
            return "::".join([path, *parts[cut:], case.get("name", "")])
    return f"{'/'.join(parts)}.py::{case.get('name')}"


def _run_child(config: pytest.Config, paths: list[str]) -> dict[str, tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "TRITON_INTERPRET": "1", "RCM_KERNEL_TEST_CHILD": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *paths]
        proc = subprocess.run(cmd, cwd=config.rootpath, env=env, capture_output=True, text=True, check=False)
        if not xml.exists():
            raise RuntimeError(f"child pytest produced no report:\n{proc.stdout}\n{proc.stderr}")
        results: dict[str, tuple[str, str]] = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = tag
                    message = (node.get("message") or "") + "\n" + (node.text or "")
                    break
            results[_nodeid_of(case, config.rootpath)] = (outcome, message)
        return results


def run_in_child(pyfuncitem: pytest.Function, folder: Path) -> bool:
    """The ``pytest_pyfunc_call`` body: report the child's outcome for this test instead of running it.

    The child runs, once, every selected test of ``folder`` that is not marked ``gpu``.
    """
    global _results
    if _results is None:
        selected = [
            item.nodeid
            for item in pyfuncitem.session.items
            if item.path.is_relative_to(folder) and "gpu" not in item.keywords
        ]
        _results = _run_child(pyfuncitem.config, selected)
    outcome, message = _results.get(pyfuncitem.nodeid, ("missing", "not found in the child run's report"))
    if outcome == "passed":
        return True
    if outcome == "skipped":
        pytest.skip(f"(interpreter child run) {message.strip()}")
    pytest.fail(f"(interpreter child run) {outcome}: {message}", pytrace=False)
