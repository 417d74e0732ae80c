"""Wan2.2-T2V-A14B on one GPU: both experts resident, the time of one call of each, and 4-step sampling.

Random weights in bf16 (the experts are built in their final dtype on the device: 2 × 14B parameters),
480p 81 frames (latents 16×21×60×104, 32760 tokens), B = 1, umT5-sized text (512 × 4096). The 4-step
student sampler is ``trigflow_multistep`` with its default times (π/2, 1.5, 1.4, 1.0): the first two
calls fall to the high-noise expert, the last two to the low-noise one (boundary 0.875).

    python benchmarks/wan22_sampling.py --json wan22.json
    python benchmarks/wan22_sampling.py --size tiny --device cpu --frames 2 --height 16 --width 16  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import rcm_registry as rr
from rcm_registry.engine.context import SampleContext


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="a14b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--frames", type=int, default=21, help="latent frames (81 video frames: 21)")
    parser.add_argument("--height", type=int, default=60, help="latent height (480p: 60)")
    parser.add_argument("--width", type=int, default=104, help="latent width (832: 104)")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16
    reg = rr.registry()

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = reg.build("network", "wan2.2-t2v-a14b", size=args.size, attention={"use": args.attention})
    finally:
        torch.set_default_dtype(default)
    net.eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    resident = torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")

    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, 16, args.frames, args.height, args.width)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    text_dim = net.arch.text_dim
    text = torch.randn(1, args.text_len, text_dim, generator=g, device=device, dtype=dtype)
    boundary = float(net.boundary_timestep)

    results: dict[str, Any] = {"parameters": params, "resident_GiB": resident, "boundary": boundary}
    with torch.no_grad():
        for name, t in (("high_noise", 0.5 * (boundary + 1000.0)), ("low_noise", 0.5 * boundary)):
            timestep = torch.full((1,), t, device=device)
            results[f"{name}_call_s"] = timed(lambda ts=timestep: net(x, ts, text), device, 1, args.repeats)

        wrapper = reg.build("teacher", "rectified_flow", t_scale=1000.0, guidance=1.0)
        sampler = reg.build("sampler", "trigflow_multistep", steps=4)

        def sample() -> Any:
            ctx = SampleContext(
                net=net,
                shape=shape,
                condition={"text": text},
                generator=torch.Generator(device=device).manual_seed(1),
                teacher=wrapper,
                device=torch.device(device),
                dtype=dtype,
            )
            return sampler(ctx)

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        results["sample_4step_s"] = timed(sample, device, 1, args.repeats)
        out = sample()
        results["sample_finite"] = bool(torch.isfinite(out).all())
        if device.startswith("cuda"):
            results["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            results["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
