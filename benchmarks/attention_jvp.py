"""Fused FlashAttention-2 JVP kernel vs ``scaled_dot_product_attention`` on one GPU, in one run.

For each shape: SDPA forward, the fused JVP (general path for self-attention, the tk = tv = None fast
path for cross-attention), SDPA backward and the Triton backward; median milliseconds over CUDA-event
timed repetitions, effective TFLOP/s (3 × 4·B·H·Nq·Nk·D / time for the JVP, 4·B·H·Nq·Nk·D for the
forward, 10·B·H·Nq·Nk·D for a backward), ratios to SDPA, and peak memory (allocated during the call,
above the inputs, and in total). Inputs are random normal bf16 in the (B, S, H, D) layout viewed as
(B, H, S, D), as the Wan network produces them.

    python benchmarks/attention_jvp.py                       # all shapes, default launch configs
    python benchmarks/attention_jvp.py --sweep --shapes self # try several tile configurations
    python benchmarks/attention_jvp.py --sweep bwd            # only the backward's
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _import_kernels() -> tuple[Any, Any]:
    """rcm_kernels, installed or straight from the checkout's rcm_kernels/ folder."""
    try:
        import rcm_kernels  # noqa: F401
    except ImportError:
        folder = Path(__file__).resolve().parents[1] / "rcm_kernels"
        spec = importlib.util.spec_from_file_location(
            "rcm_kernels", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["rcm_kernels"] = module
        spec.loader.exec_module(module)
    from rcm_kernels import attention_backward, attention_jvp

    return attention_jvp, attention_backward


K, KB = _import_kernels()

SHAPES: dict[str, tuple[int, int, int, int, int, bool]] = {
    # name: (B, H, Nq, Nk, D, key/value tangents)
    "self": (1, 12, 32760, 32760, 128, True),  # Wan2.1-1.3B 480p self-attention
    "cross": (1, 12, 32760, 512, 128, False),  # its cross-attention to 512 text tokens (fast path)
    "self14b": (1, 40, 32760, 32760, 128, True),  # Wan2.1-14B-like: 40 heads
    "n8192": (1, 12, 8192, 8192, 128, True),
}

FWD_SWEEP = [
    K.LaunchConfig(128, 64, 8, 2),
    K.LaunchConfig(128, 64, 8, 2, tma=True),  # key/value tiles through tensor descriptors
    K.LaunchConfig(128, 64, 8, 3, tma=True),
    K.LaunchConfig(128, 128, 8, 2, tma=True),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 64, 4, 3, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True),
]
# Triton's warp specialisation of the key loop (producer warps issue the descriptor copies, consumer
# warp groups run the matmuls), with descriptors built in the kernel; the first entry is the default.
WS_SWEEP = [
    K.LaunchConfig(128, 64, 8, 2),
    K.LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True, device_descriptors=True),
    K.LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True, device_descriptors=True, warp_specialize=True),
    K.LaunchConfig(128, 64, 8, 2, tma=True, device_descriptors=True),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True, device_descriptors=True),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True, device_descriptors=True, warp_specialize=True),
]
# Fast-path tiles (keys and values without tangent): few key tiles a row at the cross-attention shape.
FAST_SWEEP = [
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 128, 4, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 128, 8, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 128, 4, 1, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(128, 128, 8, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(64, 32, 4, 3, rescale_threshold=0.0, tma=True),
]
# Plain forward (no tangent) variants for the same sweep.
WS_PLAIN_SWEEP = [
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0),
    K.LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=True),
    K.LaunchConfig(128, 64, 4, 2, rescale_threshold=0.0, tma=True, device_descriptors=True),
    K.LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True, device_descriptors=True, warp_specialize=True),
    K.LaunchConfig(128, 128, 8, 2, rescale_threshold=0.0, tma=True, device_descriptors=True, warp_specialize=True),
]
BWD_SWEEP = [
    KB.BackwardConfig(128, 32, 128, 32, 8, 3, atomic_dq=False),
    KB.BackwardConfig(64, 64, 64, 64, 4, 3, atomic_dq=False),
    KB.BackwardConfig(128, 32, 0, 0, 8, 3, tma_dq=False),
    KB.BackwardConfig(128, 32, 0, 0, 8, 3),
    KB.BackwardConfig(128, 64, 0, 0, 8, 2),
    KB.BackwardConfig(128, 64, 0, 0, 8, 3),
    KB.BackwardConfig(64, 64, 0, 0, 4, 3),
]


def time_ms(fn: Callable[[], Any], reps: int) -> float:
    """Median milliseconds a call, each sample a batch of back-to-back calls between two events.

    A single call between events also times the host's launch work whenever the GPU waits for it
    (tens of microseconds for a Triton launch from Python, a tenth of the cross-attention kernel);
    batching calls until a sample lasts about 5 ms queues them as a network's forward would.
    """
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    batch = max(1, min(50, round(5.0 / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / batch)
    return statistics.median(times)


def peak_mib(fn: Callable[[], Any]) -> tuple[float, float]:
    """(peak allocated above what was live before the call, peak allocated in total), MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / 2**20, peak / 2**20


def bench_shape(name: str, reps: int, sweep: str | None) -> dict[str, Any]:
    b, h, nq, nk, d, kv_tangent = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def bshd(n: int) -> torch.Tensor:
        return torch.randn((b, n, h, d), generator=gen, device="cuda", dtype=torch.bfloat16).transpose(1, 2)

    q, k, v, tq = bshd(nq), bshd(nk), bshd(nk), bshd(nq)
    tk, tv = (bshd(nk), bshd(nk)) if kv_tangent else (None, None)
    do = bshd(nq)
    flop = 4.0 * b * h * nq * nk * d
    row: dict[str, Any] = {"shape": name, "B": b, "H": h, "Nq": nq, "Nk": nk, "D": d, "kv_tangent": kv_tangent}

    row["sdpa_fwd_ms"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps)
    row["sdpa_fwd_tflops"] = flop / row["sdpa_fwd_ms"] / 1e9
    row["sdpa_fwd_mem_mib"], row["sdpa_fwd_total_mib"] = peak_mib(lambda: F.scaled_dot_product_attention(q, k, v))

    # Diagnostic: the same kernel with its tangent compiled out, against SDPA forward. The JVP does 3×
    # (2× on the fast path) this kernel's matmuls, so this ratio bounds what tuning the JVP alone can reach.
    row["triton_fwd_ms"] = time_ms(lambda: K.attention_jvp_forward(q, k, v), reps)
    row["triton_fwd_over_sdpa"] = row["triton_fwd_ms"] / row["sdpa_fwd_ms"]
    if sweep in ("all", "fwd", "ws"):
        plain = K.default_config(d, q.dtype, False, q.device, has_tangent=False)
        variants = WS_PLAIN_SWEEP if sweep == "ws" else [plain._replace(tma=True)]
        for variant in variants:
            try:
                ms = time_ms(lambda variant=variant: K.attention_jvp_forward(q, k, v, config=variant), reps)
            except Exception as err:
                print(f"  {name} plain fwd {variant}: failed ({type(err).__name__}: {str(err)[:100]})", flush=True)
                continue
            o_ref, o_var = K.attention_jvp_forward(q, k, v)[0], K.attention_jvp_forward(q, k, v, config=variant)[0]
            diff = ((o_var.float() - o_ref.float()).norm() / o_ref.float().norm()).item()
            print(
                f"  {name} plain fwd {row['triton_fwd_ms']:.2f} ms, with {variant}: {ms:.2f} ms, diff {diff:.1e}",
                flush=True,
            )

    configs = {"all": FWD_SWEEP, "fwd": FWD_SWEEP, "ws": WS_SWEEP, "fast": FAST_SWEEP}.get(sweep or "", [None])
    fwd_runs = []
    first_to = None
    for cfg in configs:
        try:
            ms = time_ms(lambda cfg=cfg: K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg), reps)
        except Exception as err:  # a tile config can exceed shared memory on some GPUs
            print(f"  {name} fwd {cfg}: failed ({type(err).__name__}: {str(err)[:100]})", flush=True)
            continue
        fwd_runs.append((ms, cfg))
        # Each variant must compute the same function: relative difference of its tangent to the first's.
        to = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg)[1]
        first_to = to if first_to is None else first_to
        diff = ((to.float() - first_to.float()).norm() / first_to.float().norm()).item()
        print(f"  {name} jvp {cfg}: {ms:.2f} ms ({ms / row['sdpa_fwd_ms']:.2f}x SDPA fwd), diff {diff:.1e}", flush=True)
    to = first_to = None
    ms, cfg = min(fwd_runs, key=lambda r: r[0])
    row["jvp_ms"], row["jvp_config"] = ms, str(cfg or K.default_config(d, q.dtype, kv_tangent, q.device))
    row["jvp_tflops_eff"] = 3 * flop / ms / 1e9
    row["jvp_over_sdpa_fwd"] = ms / row["sdpa_fwd_ms"]
    row["jvp_mem_mib"], row["jvp_total_mib"] = peak_mib(
        lambda: K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg)
    )
    row["jvp_mem_over_sdpa"] = row["jvp_total_mib"] / row["sdpa_fwd_total_mib"]

    # Backward: SDPA's through autograd (its forward excluded from the timing), ours from saved o and lse.
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    o_sdpa = F.scaled_dot_product_attention(*leaves)
    row["sdpa_bwd_ms"] = time_ms(lambda: torch.autograd.grad(o_sdpa, leaves, do, retain_graph=True), reps)
    row["sdpa_bwd_tflops"] = 2.5 * flop / row["sdpa_bwd_ms"] / 1e9
    o_sdpa = None
    o, _, lse = K.attention_jvp_forward(q, k, v)
    bwd_runs = []
    first_dq = None
    for bcfg in BWD_SWEEP if sweep in ("all", "bwd") else [None]:
        try:
            ms = time_ms(lambda bcfg=bcfg: KB.attention_backward(q, k, v, o, lse, do, config=bcfg), reps)
        except Exception as err:
            print(f"  {name} bwd {bcfg}: failed ({type(err).__name__}: {str(err)[:100]})", flush=True)
            continue
        bwd_runs.append((ms, bcfg))
        dq = KB.attention_backward(q, k, v, o, lse, do, config=bcfg)[0]
        first_dq = dq if first_dq is None else first_dq
        diff = ((dq.float() - first_dq.float()).norm() / first_dq.float().norm()).item()
        print(f"  {name} bwd {bcfg}: {ms:.2f} ms ({ms / row['sdpa_bwd_ms']:.2f}x SDPA bwd), dq diff {diff:.1e}")
    ms, bcfg = min(bwd_runs, key=lambda r: r[0])
    row["bwd_ms"], row["bwd_config"] = ms, str(bcfg or KB.default_backward_config(d, q.dtype, q.device, nk))
    row["bwd_tflops"] = 2.5 * flop / ms / 1e9
    row["bwd_over_sdpa_bwd"] = ms / row["sdpa_bwd_ms"]
    o = lse = first_dq = dq = None
    # Last, as it overwrites tq: the output tangent written over the query tangent (allowed by
    # attention_jvp_forward), so that beyond SDPA's own output only the log-sum-exp is allocated.

    def jvp_in_place() -> Any:
        o = K.empty_bhsd(b, h, nq, d, dtype=q.dtype, device=q.device)
        lse = torch.empty((b, h, nq), dtype=torch.float32, device=q.device)
        return K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg, out=(o, tq, lse))

    _, row["jvp_inplace_total_mib"] = peak_mib(jvp_in_place)
    row["jvp_inplace_mem_over_sdpa"] = row["jvp_inplace_total_mib"] / row["sdpa_fwd_total_mib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="all",
        choices=["all", "fwd", "bwd", "ws", "fast"],
        help="time several launch configurations (of the JVP, the backward or both), report the best",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {K.triton.__version__}", flush=True)
    rows = [bench_shape(name, args.reps, args.sweep) for name in args.shapes]
    print(
        "| shape | SDPA fwd ms (TFLOP/s) | Triton fwd / SDPA fwd | JVP ms | JVP eff. TFLOP/s | JVP / SDPA fwd "
        "| SDPA bwd ms | Triton bwd ms | bwd / SDPA bwd | peak MiB SDPA fwd / JVP (above inputs) "
        "| total peak ratio (to in tq) | configs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} B{r['B']} H{r['H']} Nq{r['Nq']} Nk{r['Nk']} D{r['D']}"
            f"{'' if r['kv_tangent'] else ' (fast path)'} "
            f"| {r['sdpa_fwd_ms']:.2f} ({r['sdpa_fwd_tflops']:.0f}) | {r['triton_fwd_over_sdpa']:.2f}x "
            f"| {r['jvp_ms']:.2f} | {r['jvp_tflops_eff']:.0f} "
            f"| {r['jvp_over_sdpa_fwd']:.2f}x | {r['sdpa_bwd_ms']:.2f} | {r['bwd_ms']:.2f} "
            f"| {r['bwd_over_sdpa_bwd']:.2f}x "
            f"| {r['sdpa_fwd_mem_mib']:.0f} / {r['jvp_mem_mib']:.0f} | {r['jvp_mem_over_sdpa']:.2f}x "
            f"({r['jvp_inplace_mem_over_sdpa']:.2f}x) "
            f"| fwd {r['jvp_config']}; bwd {r['bwd_config']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
