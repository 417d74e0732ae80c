"""What this machine can run: versions, devices and which kernel paths apply (``rcm env``).

Meant for bug reports and for checking a set-up before a long job: it imports torch (and Triton only
if it is installed) but allocates nothing on a device and starts no kernel.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

#: Libraries whose versions a report lists: required, optional codecs and references, test tools.
LIBRARIES = (
    "rcm-registry", "torch", "triton", "safetensors", "pyyaml", "diffusers", "transformers", "imageio",
    "imageio-ffmpeg", "matplotlib", "tensorboard", "wandb",
)  # fmt: skip
#: Environment variables that change what the library does.
VARIABLES = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "RCM_DISABLE_PLUGIN_AUTOLOAD")
#: Compute capability from which Triton loads tiles through tensor descriptors (the Hopper copy engine).
DESCRIPTOR_CAPABILITY = (9, 0)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices(torch: Any) -> list[dict[str, Any]]:
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = (props.major, props.minor)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "bf16": capability >= (8, 0),
                "tensor_descriptors": capability >= DESCRIPTOR_CAPABILITY,
            }
        )
    return devices


def _kernel_paths(triton_version: str | None, devices: list[dict[str, Any]]) -> dict[str, str]:
    """Where the Triton kernels (attention JVP, fused token ops) run, in words."""
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    if triton_version is None:
        where = "unavailable: Triton is not installed (attention backends `math` and `sdpa` still work)"
    elif devices and not interpreter:
        where = f"compiled for {len(devices)} CUDA device(s)"
    elif interpreter:
        where = "CPU tensors in Triton's interpreter (TRITON_INTERPRET=1): for tests, slow"
    else:
        where = "no CUDA device: only in Triton's interpreter (set TRITON_INTERPRET=1 before importing triton)"
    if devices and not interpreter and triton_version is not None:
        with_descriptors = [d["index"] for d in devices if d["tensor_descriptors"]]
        loads = (
            f"tensor descriptors on device(s) {with_descriptors}"
            if with_descriptors
            else "pointer loads (tensor descriptors need compute capability 9.0+)"
        )
    elif interpreter and triton_version is not None:
        loads = "tensor descriptors emulated by the interpreter"
    else:
        loads = "-"
    return {"triton_kernels": where, "tile_loads": loads}


def _plugins() -> dict[str, Any]:
    from rcm_registry.plugin_loading import registry

    reg = registry()
    return {
        "plugins": len(reg.plugins),
        "components": sum(len(p.components) for p in reg.plugins),
        "failures": [f"{f.name} ({f.distribution}): {f.error}" for f in reg.failures],
    }


def environment_report() -> dict[str, Any]:
    """Versions, devices, kernel paths, plugins and the relevant environment variables, as plain data."""
    import torch

    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        # Some CUDA builds of torch ship Triton under another distribution name.
        triton_version = _version("triton") or _version("pytorch-triton") or "installed (version unknown)"
    cuda = torch.cuda.is_available()
    devices = _devices(torch) if cuda else []
    return {
        "python": f"{sys.version.split()[0]} ({platform.platform()})",
        "versions": {name: _version(name) for name in LIBRARIES} | {"triton": triton_version},
        "torch_build": {"cuda": torch.version.cuda, "cuda_available": cuda, "cpu_threads": torch.get_num_threads()},
        "devices": devices,
        "kernels": _kernel_paths(triton_version, devices),
        "registry": _plugins(),
        "environment": {name: os.environ.get(name) for name in VARIABLES},
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned ``key: value`` lines, one section after another."""
    lines = [f"python: {report['python']}", "versions:"]
    lines += [f"  {name:<14} {version or 'not installed'}" for name, version in report["versions"].items()]
    build = report["torch_build"]
    lines.append(
        f"torch build: CUDA {build['cuda'] or 'none (CPU build)'}, CUDA available: {build['cuda_available']}, "
        f"CPU threads: {build['cpu_threads']}"
    )
    lines.append("devices:" if report["devices"] else "devices: none (CPU only)")
    for d in report["devices"]:
        lines.append(
            f"  cuda:{d['index']} {d['name']}, compute capability {d['capability']}, {d['memory_gib']} GiB, "
            f"bf16 {'yes' if d['bf16'] else 'no'}"
        )
    lines.append(f"Triton kernels: {report['kernels']['triton_kernels']}")
    lines.append(f"tile loads: {report['kernels']['tile_loads']}")
    reg = report["registry"]
    lines.append(f"plugins: {reg['plugins']} loaded, {reg['components']} components")
    lines += [f"  failed: {failure}" for failure in reg["failures"]]
    set_vars = {k: v for k, v in report["environment"].items() if v is not None}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in set_vars.items()) or "(none of note set)"))
    return "\n".join(lines)
