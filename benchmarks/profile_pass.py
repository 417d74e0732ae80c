"""Where a network pass spends its GPU time: a kernel table from ``torch.profiler``.

Builds Wan2.1-1.3B (480p, 31200 tokens) or Cosmos-Predict2-2B (1024², 4096 tokens) with random bf16 weights
and a few blocks, runs the forward, the JVP pass (dual tensors on x and t, as sCM uses) and a forward +
backward under the profiler, and prints per pass the CUDA time split into attention kernels, matmuls and
everything else, and the top kernels by total time. The per-block split is what tells whether a pass's cost
over a forward comes from attention, from the matmuls or from the elementwise, norm and modulation ops.

    python benchmarks/profile_pass.py --network wan --blocks 2
    python benchmarks/profile_pass.py --network cosmos --blocks 4 --top 25
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import rcm_registry as rr
from rcm_registry.jvp import jvp

_NETWORKS = {
    "wan": ("wan2.1-t2v", "1.3B", (16, 20, 60, 104), 4096),
    "cosmos": ("cosmos-predict2-t2i", "2B", (16, 1, 128, 128), 1024),
}


def _kind(name: str) -> str:
    low = name.lower()
    if "attention" in low or "flash" in low or "fmha" in low or "_attn" in low or "jvp_fwd" in low:
        return "attention"
    if "gemm" in low or "sm90_xmma" in low or "cutlass" in low or "nvjet" in low or "matmul" in low:
        return "matmul"
    return "other"


def _profile(fn: Callable[[], Any], warmup: int) -> list[tuple[str, int, float]]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type.name != "CUDA":
            continue
        entry = totals[event.name]
        entry[0] += 1
        entry[1] += event.device_time_total / 1000.0
    return sorted(((k, int(v[0]), v[1]) for k, v in totals.items()), key=lambda r: -r[2])


def _report(title: str, rows: list[tuple[str, int, float]], top: int) -> None:
    total = sum(r[2] for r in rows)
    by_kind: dict[str, float] = defaultdict(float)
    launches: dict[str, int] = defaultdict(int)
    for name, count, ms in rows:
        by_kind[_kind(name)] += ms
        launches[_kind(name)] += count
    print(f"\n## {title}: {total:.1f} ms of kernels")
    for kind in ("attention", "matmul", "other"):
        print(f"- {kind}: {by_kind[kind]:.1f} ms in {launches[kind]} launches")
    print("\n| kernel | launches | ms | share |\n|---|---:|---:|---:|")
    for name, count, ms in rows[:top]:
        print(f"| {name[:110]} | {count} | {ms:.2f} | {100 * ms / total:.1f}% |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", choices=sorted(_NETWORKS), default="wan")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_pass.py needs a CUDA device")
    name, size, shape, text_dim = _NETWORKS[args.network]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        net = rr.registry().build("network", name, size=size, attention={"use": "triton_jvp"}, num_layers=args.blocks)
    torch.set_default_dtype(torch.float32)
    net.eval()
    dev = "cuda"
    x = torch.randn(1, *shape, device=dev, dtype=torch.bfloat16)
    dx = torch.randn_like(x)
    t = torch.rand(1, device=dev) * (1000 if args.network == "wan" else 1)
    dt = torch.randn(1, device=dev)
    text = torch.randn(1, 512, getattr(net.arch, "text_dim", text_dim), device=dev, dtype=torch.bfloat16)

    def forward() -> None:
        with torch.no_grad():
            net(x, t, text)

    def tangent() -> None:
        jvp(lambda a, b: net(a, b, text), (x, t), (dx, dt))

    def forward_backward() -> None:
        net.train()
        net(x, t, text).float().square().mean().backward()
        net.zero_grad(set_to_none=True)
        net.eval()

    gpu = torch.cuda.get_device_name()
    print(f"# {name} {size}, {args.blocks} blocks, latents {shape}, {gpu}, torch {torch.__version__}")
    _report("forward", _profile(forward, args.warmup), args.top)
    _report("JVP pass", _profile(tangent, args.warmup), args.top)
    _report("forward + backward (graph-recording forward: eager token ops)", _profile(forward_backward, 1), args.top)


if __name__ == "__main__":
    main()
