"""``rcm env``: the report names this machine's versions and where the Triton kernels run."""

from __future__ import annotations

import json

import pytest
import torch

from rcm_registry.environment import _kernel_paths, environment_report, format_report
from rcm_registry.plugin_loading import registry
from rcm_registry.testing import run_cli


def test_text_report_lists_versions_devices_and_kernel_paths() -> None:
    result = run_cli("env")
    assert result.code == 0, result.err
    assert f"torch          {torch.__version__}" in result.out
    assert "Triton kernels: " in result.out and "tile loads: " in result.out
    expected_devices = "devices: none (CPU only)" if not torch.cuda.is_available() else "cuda:0 "
    assert expected_devices in result.out


def test_json_report_is_the_same_data() -> None:
    result = run_cli("env", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["torch_build"]["cuda_available"] == torch.cuda.is_available()
    assert len(report["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    reg = registry()
    assert report["registry"]["plugins"] == len(reg.plugins)
    assert report["registry"]["components"] == sum(len(p.components) for p in reg.plugins) > 0
    assert format_report(report).splitlines()[0].startswith("python: ")


def test_environment_variables_of_note_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCM_DISABLE_PLUGIN_AUTOLOAD", "1")
    report = environment_report()
    assert report["environment"]["RCM_DISABLE_PLUGIN_AUTOLOAD"] == "1"
    assert "RCM_DISABLE_PLUGIN_AUTOLOAD=1" in format_report(report)


def _device(index: int, capability: tuple[int, int]) -> dict[str, object]:
    return {"index": index, "tensor_descriptors": capability >= (9, 0)}


@pytest.mark.parametrize(
    ("triton", "devices", "interpreter", "where", "loads"),
    [
        (None, [], False, "unavailable: Triton is not installed", "-"),
        ("3.6.0", [], False, "no CUDA device", "-"),
        ("3.6.0", [], True, "interpreter", "emulated by the interpreter"),
        ("3.6.0", [_device(0, (9, 0)), _device(1, (8, 0))], False, "2 CUDA device(s)", "device(s) [0]"),
        ("3.6.0", [_device(0, (8, 6))], False, "1 CUDA device(s)", "pointer loads"),
    ],
)
def test_kernel_paths_follow_triton_devices_and_interpreter(
    monkeypatch: pytest.MonkeyPatch,
    triton: str | None,
    devices: list[dict[str, object]],
    interpreter: bool,
    where: str,
    loads: str,
) -> None:
    if interpreter:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    paths = _kernel_paths(triton, devices)
    assert where in paths["triton_kernels"]
    assert loads in paths["tile_loads"]
