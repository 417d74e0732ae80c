"""Wan2.1 network passes on one GPU: forward, JVP (forward-mode AD) and forward+backward, with peak memory.

Random weights (no checkpoint needed), bf16 parameters and activations, B=1, 480p: latents 20×60×104
(after the (1, 2, 2) patch: 20×30×52 = 31200 tokens), 512 text tokens. The JVP pass is what sCM/rCM runs
for the student's tangent: dual tensors on x and the timestep, no autograd graph; it uses the attention
backend ``triton_jvp`` when registered (its primal calls go to SDPA), and says which backend ran.
Times are medians of CUDA-event timed repetitions after warm-up; peak memory is
``torch.cuda.max_memory_allocated`` during each pass (weights included; the weights alone are listed too).

    python benchmarks/wan_step.py                                  # 1.3B, triton_jvp, 480p
    python benchmarks/wan_step.py --attention sdpa --size 14B
    python benchmarks/wan_step.py --bf16-jvp-error --device cpu --num-layers 2 --frames 3 --height 16 --width 16

``--bf16-jvp-error`` instead measures how far the bf16 network's output and JVP are from the same
network's in float64 (relative L2 error), on shapes small enough for float64 and the ``math`` backend.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _pass_table import GENERIC_LINEAR_ROW, HEADER, generic_linear, pass_rows

import rcm_registry as rr
from rcm_registry.jvp import jvp


def _default_attention(registry: rr.Registry) -> str:
    return "triton_jvp" if registry.find("attention", "triton_jvp") is not None else "math"


def _build(args: argparse.Namespace, attention: str, *, device: str, dtype: torch.dtype) -> Any:
    registry = rr.registry()
    overrides = {"num_layers": args.num_layers} if args.num_layers else {}
    # Parameters are created in their final dtype on the device: 14B in float32 first would not fit.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = registry.build("network", "wan2.1-t2v", size=args.size, attention={"use": attention}, **overrides)
    finally:
        torch.set_default_dtype(default)
    return net


def _inputs(net: Any, args: argparse.Namespace, device: str, dtype: torch.dtype, seed: int) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (args.batch, net.arch.in_channels, args.frames, args.height, args.width)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    return {
        "x": x,
        "t": 1000 * torch.rand(args.batch, generator=g, device=device),
        "text": torch.randn(args.batch, args.text_len, net.arch.text_dim, generator=g, device=device, dtype=dtype),
        "dx": torch.randn(shape, generator=g, device=device, dtype=dtype),
        "dt": torch.randn(args.batch, generator=g, device=device),
    }


def _time_cuda(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """(median ms, peak GiB allocated during the timed calls)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def _step_table(args: argparse.Namespace) -> str:
    if not torch.cuda.is_available():
        raise SystemExit("wan_step.py needs a CUDA device (use --bf16-jvp-error for a CPU measurement)")
    registry = rr.registry()
    attention = args.attention or _default_attention(registry)
    torch.manual_seed(0)
    net = _build(args, attention, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    weights_gib = torch.cuda.memory_allocated() / 2**30
    i = _inputs(net, args, "cuda", torch.bfloat16, seed=1)
    x, t, text = i["x"], i["t"], i["text"]
    grid = (args.frames, args.height // 2, args.width // 2)
    tokens = grid[0] * grid[1] * grid[2]

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(x, t, text)

    def tangent() -> None:
        net.eval()
        jvp(lambda a, b: net(a, b, text), (x, t), (i["dx"], i["dt"]))

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
    rows = pass_rows(passes, lambda fn: _time_cuda(fn, args.warmup, args.repeats), net)

    head = [
        f"Wan2.1-{args.size} (random weights, {net.arch.num_layers} blocks), bf16, B={args.batch}, latents "
        f"{args.frames}×{args.height}×{args.width} → {'×'.join(map(str, grid))} = {tokens} tokens, text "
        f"{args.text_len}; attention `{attention}`; {torch.cuda.get_device_name()}, torch {torch.__version__}; "
        f"median of {args.repeats} after {args.warmup} warm-up; weights {weights_gib:.2f} GiB.",
        "",
        *HEADER,
    ]
    return "\n".join(head + rows)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _bf16_error_table(args: argparse.Namespace) -> str:
    device = args.device
    torch.manual_seed(0)
    start = time.perf_counter()
    net64 = _build(args, "math", device=device, dtype=torch.float64).eval()
    attention16 = args.attention or ("triton_jvp" if device == "cuda" else "math")
    net16 = _build(args, attention16, device=device, dtype=torch.bfloat16).eval()
    net16.load_state_dict(net64.state_dict())  # the same weights, rounded to bf16
    rows = []
    for seed in range(args.repeats):
        i = _inputs(net64, args, device, torch.float64, seed=seed)
        text64, text16 = i["text"], i["text"].bfloat16()
        out64, tan64 = jvp(lambda a, b, c=text64: net64(a, b, c), (i["x"], i["t"].double()), (i["dx"], i["dt"]))
        out16, tan16 = jvp(
            lambda a, b, c=text16: net16(a, b, c), (i["x"].bfloat16(), i["t"]), (i["dx"].bfloat16(), i["dt"])
        )
        rows.append((_rel(out16, out64), _rel(tan16, tan64)))
    a = net64.arch
    grid = (args.frames, args.height // 2, args.width // 2)
    med_out = statistics.median(r[0] for r in rows)
    med_tan = statistics.median(r[1] for r in rows)
    return "\n".join(
        [
            f"bf16 vs float64, Wan2.1-{args.size} width (dim {a.dim}, {a.num_heads} heads, {a.num_layers} blocks), "
            f"random weights, B={args.batch}, {'×'.join(map(str, grid))} tokens, text {args.text_len}; bf16 "
            f"attention `{attention16}`, float64 reference `math`; {device} ({platform.processor() or 'cpu'}), "
            f"torch {torch.__version__}; {len(rows)} random draws, {time.perf_counter() - start:.0f} s.",
            "",
            "| quantity | median relative L2 error | max |",
            "|---|---:|---:|",
            f"| output F | {med_out:.2e} | {max(r[0] for r in rows):.2e} |",
            f"| JVP dF (tangent on x and t) | {med_tan:.2e} | {max(r[1] for r in rows):.2e} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1.3B", choices=["1.3B", "14B", "tiny"])
    p.add_argument("--attention", default=None, help="attention backend (default: triton_jvp if registered)")
    p.add_argument("--num-layers", type=int, default=None, help="override the block count (memory/time scale)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--width", type=int, default=104)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bf16-jvp-error", action="store_true", help="measure bf16 vs float64 error instead")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    print(_bf16_error_table(args) if args.bf16_jvp_error else _step_table(args))


if __name__ == "__main__":
    main()
