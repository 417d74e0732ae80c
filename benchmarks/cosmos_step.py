"""Cosmos-Predict2 network passes on one GPU: forward, JVP (forward-mode AD) and forward+backward, with peak memory.

Random weights (no checkpoint needed), bf16 parameters and activations, B=1, Text2Image at 1024×1024:
latents 16×1×128×128 (after the (1, 2, 2) patch: 64×64 = 4096 tokens), 512 T5 tokens of width 1024. The
JVP pass is what sCM/rCM runs for the student's tangent: dual tensors on x and the timestep, no autograd
graph; it uses the attention backend ``triton_jvp`` when registered (its primal calls go to SDPA) and says
which backend ran. Times are medians of CUDA-event timed repetitions after warm-up; peak memory is
``torch.cuda.max_memory_allocated`` during each pass (weights included; the weights alone are listed too).

    python benchmarks/cosmos_step.py                                   # 2B T2I, triton_jvp, 1024²
    python benchmarks/cosmos_step.py --attention sdpa --size 14B
    python benchmarks/cosmos_step.py --device cpu --size tiny --height 16 --width 16 --repeats 1   # smoke run

On the CPU the times are wall-clock medians and no memory is reported (a check that the script runs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _pass_table import GENERIC_LINEAR_ROW, HEADER, generic_linear, pass_rows

import rcm_registry as rr
from rcm_registry.jvp import jvp


def _build(args: argparse.Namespace, attention: str, device: str) -> Any:
    overrides = {"num_layers": args.num_layers} if args.num_layers else {}
    # Parameters are created in bf16 directly on the device: 14B in float32 first would not fit.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return rr.registry().build(
                "network", "cosmos-predict2-t2i", size=args.size, attention={"use": attention}, **overrides
            )
    finally:
        torch.set_default_dtype(default)


def _timed(fn: Callable[[], Any], warmup: int, repeats: int, cuda: bool) -> tuple[float, float | None]:
    """(median ms, peak GiB allocated during the timed calls, or None off CUDA)."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return statistics.median(times), peak


def step_table(args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: pass --device cpu for a smoke run")
    registry = rr.registry()
    attention = args.attention or ("triton_jvp" if registry.find("attention", "triton_jvp") and cuda else "math")
    torch.manual_seed(0)
    net = _build(args, attention, args.device)
    weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
    g = torch.Generator(device=args.device).manual_seed(1)
    shape = (args.batch, net.arch.in_channels, 1, args.height, args.width)
    x = torch.randn(shape, generator=g, device=args.device, dtype=torch.bfloat16)
    dx = torch.randn(shape, generator=g, device=args.device, dtype=torch.bfloat16)
    # Network time is s = σ/(σ + 1) ∈ (0, 1); the time path stays float32.
    t = torch.rand(args.batch, generator=g, device=args.device)
    dt = torch.randn(args.batch, generator=g, device=args.device)
    text = torch.randn(
        args.batch, args.text_len, net.arch.text_dim, generator=g, device=args.device, dtype=torch.bfloat16
    )
    tokens = (args.height // 2) * (args.width // 2)

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(x, t, text)

    def tangent() -> None:
        net.eval()
        jvp(lambda a, b: net(a, b, text), (x, t), (dx, dt))

    def forward_backward(checkpointing: bool) -> Callable[[], None]:
        def run() -> None:
            net.train()
            net.activation_checkpointing = checkpointing
            net(x, t, text).float().square().mean().backward()
            net.zero_grad(set_to_none=True)

        return run

    passes = [
        ("forward", forward),
        ("JVP (forward AD, tangents on x and t)", tangent),
        (GENERIC_LINEAR_ROW, generic_linear(tangent)),
        ("forward + backward", forward_backward(False)),
        ("forward + backward, activation checkpointing", forward_backward(True)),
    ]
    rows = pass_rows(passes, lambda fn: _timed(fn, args.warmup, args.repeats, cuda), net)

    device = torch.cuda.get_device_name() if cuda else args.device
    weights = "" if weights_gib is None else f"; weights {weights_gib:.2f} GiB"
    head = [
        f"Cosmos-Predict2-{args.size} Text2Image (random weights, {net.arch.num_layers} blocks), bf16, "
        f"B={args.batch}, latents 1×{args.height}×{args.width} → {tokens} tokens, text {args.text_len}; attention "
        f"`{attention}`; {device}, torch {torch.__version__}; median of {args.repeats} after {args.warmup} "
        f"warm-up{weights}.",
        "",
        *HEADER,
    ]
    return "\n".join(head + rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2B", choices=["2B", "14B", "tiny"])
    p.add_argument("--attention", default=None, help="attention backend (default: triton_jvp if registered)")
    p.add_argument("--num-layers", type=int, default=None, help="override the block count (memory/time scale)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--height", type=int, default=128, help="latent height (1024 px / 8)")
    p.add_argument("--width", type=int, default=128, help="latent width (1024 px / 8)")
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda")
    print(step_table(p.parse_args(argv)))


if __name__ == "__main__":
    main()
