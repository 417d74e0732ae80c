"""The INT8 attention kernel's launch configurations against flash attention, at Wan2.1-1.3B's 480p shape.

    python benchmarks/int8_attention_sweep.py [--json out.json] [--reps 10] [--pv fp8]

For each (block_m, block_n, num_warps, num_stages) of ``--configs`` (default: a grid around the kernel's
default; the tiles are also its quantisation blocks, so each config is its own quantisation too):
``rcm_kernels.attention_int8.int8_attention`` end to end (quantisation of Q and K included), the
quantisation alone (``quantize_qk``: the fused Triton pass the kernel uses, and the torch reference it
replaced), and the output's relative L2 distance from SDPA's, against
``F.scaled_dot_product_attention`` (flash) on the same bf16 inputs. Medians of CUDA-event timings; a config
the compiler or the GPU refuses (shared memory, registers) is reported as such, not fatal. ``--pv fp8``
sweeps the kernel with P·V in FP8 (its V quantisation included in the end-to-end time). CUDA only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from attention_jvp import time_ms

#: (block_m, block_n, num_warps, num_stages): the defaults, (128, 64, 4, 3) and, with P·V in FP8,
#: (64, 128, 4, 3), and their neighbours.
CONFIGS = [
    (128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 4, 3), (128, 64, 8, 4),
    (128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 4, 3), (64, 64, 4, 3),
    (64, 128, 4, 3), (64, 128, 4, 2), (64, 128, 4, 4), (64, 128, 8, 3), (64, 256, 4, 3), (32, 128, 4, 3),
    (128, 32, 4, 3), (256, 64, 8, 2),
]  # fmt: skip


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[1, 12, 32760, 128], metavar=("B", "H", "N", "D"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--configs", type=int, nargs=4, action="append", metavar=("BM", "BN", "WARPS", "STAGES"))
    parser.add_argument("--pv", choices=["input", "fp8"], default="input", help="how the kernel multiplies P·V")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA: the sweep times the Triton kernel on the GPU")
    from rcm_kernels.attention_int8 import Int8LaunchConfig, int8_attention, quantize_qk

    device = torch.device("cuda")
    b, h, n, d = args.shape
    gen = torch.Generator(device=device).manual_seed(0)
    # (B, S, H, D) memory seen as (B, H, S, D), as the networks hand attention its inputs.
    q, k, v = (
        torch.randn(b, n, h, d, generator=gen, device=device, dtype=torch.bfloat16).transpose(1, 2) for _ in "qkv"
    )
    flops = 4.0 * b * h * n * n * d
    with torch.no_grad():
        sdpa = F.scaled_dot_product_attention(q, k, v)
        sdpa_ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.reps)
        print(f"SDPA {sdpa_ms:.2f} ms ({flops / sdpa_ms / 1e9:.0f} TFLOP/s)", flush=True)
        rows: list[dict[str, Any]] = []
        for bm, bn, warps, stages in [tuple(c) for c in (args.configs or CONFIGS)]:
            cfg = Int8LaunchConfig(bm, bn, warps, stages)
            row: dict[str, Any] = {"config": list(cfg)}
            try:
                out = int8_attention(q, k, v, config=cfg, pv=args.pv)
                row["ms"] = time_ms(lambda cfg=cfg: int8_attention(q, k, v, config=cfg, pv=args.pv), args.reps)
                row["quantize_ms"] = time_ms(lambda cfg=cfg: quantize_qk(q, k, cfg.block_m, cfg.block_n), args.reps)
                row["quantize_torch_ms"] = time_ms(
                    lambda cfg=cfg: quantize_qk(q, k, cfg.block_m, cfg.block_n, fused=False), args.reps
                )
                row["vs_sdpa"] = sdpa_ms / row["ms"]
                row["tflops"] = flops / row["ms"] / 1e9
                row["rel_err_vs_sdpa"] = rel_err(out, sdpa)
                print(
                    f"{cfg}: {row['ms']:.2f} ms (quantisation {row['quantize_ms']:.2f}, in torch "
                    f"{row['quantize_torch_ms']:.2f}), {row['vs_sdpa']:.2f}× SDPA, "
                    f"{row['rel_err_vs_sdpa']:.2%} off",
                    flush=True,
                )
            except Exception as exc:  # a config the compiler or the device refuses: say so, try the next
                row["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"{cfg}: failed ({row['failed']})", flush=True)
                torch.cuda.synchronize()
            rows.append(row)
    result = {
        "device": torch.cuda.get_device_name(device), "shape": args.shape, "pv": args.pv, "sdpa_ms": sdpa_ms,
        "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
