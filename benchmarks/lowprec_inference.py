"""Low-precision inference on the GPU: INT8 attention vs SDPA, FP8 linear vs bf16 linear, one Wan forward each.

    python benchmarks/lowprec_inference.py [--json out.json]     # CUDA: the Wan2.1-1.3B 480p shapes
    python benchmarks/lowprec_inference.py --smoke               # CPU, tiny shapes (tests run this)

Shapes (Wan2.1-T2V-1.3B at 480p, 81 frames: 21×30×52 = 32760 tokens, width 1536, FFN 8960, 12 heads of 128):

* attention: ``int8_sage`` (``rcm_kernels.attention_int8.int8_attention``, quantisation included), with P·V
  in bf16 and in FP8 (``pv: fp8``), against ``F.scaled_dot_product_attention`` (flash) on B1 H12 N32760 D128
  bf16, with the relative error of each output against SDPA's;
* linear: ``Fp8Linear`` (the fused quantisation kernel ``rcm_kernels.fp8_quantize`` into ``torch._scaled_mm``
  with the bias in its epilogue) against a bf16 ``nn.Linear`` at the FFN's two shapes and the attention
  projection, 32760 tokens; on CUDA also the layer's previous path (torch ``quantize_rows``, a padded copy of
  the FP8 operand, a separate bias add) as ``fp8_torch_quant_ms``;
* the feed-forward (FFN up → GELU → FFN down) in bf16, with its two FP8 linears one after the other, and as
  ``Fp8GeluMlp`` (the GELU inside the hidden activation's quantisation kernel);
* activation quantisation alone: torch ``quantize_rows`` plus the padding copy against the fused kernel, on
  32760 tokens of width 1536 and 8960, and whether the kernel's e4m3 bytes and scales equal the torch ones;
  and the kernel with each row held whole in registers instead of in chunks of 1024 (``whole_row_ms``);
* one forward of the 1.3B network (random weights, bf16) with its own ``sdpa`` attention, with ``int8_sage``
  (P·V in bf16, and in FP8), with FP8 linears, and with each ``int8_sage`` and FP8 linears together.

Times are medians of CUDA-event timings (``--reps`` samples of back-to-back calls); TFLOP/s counts 2·M·K·N
for a linear and 4·B·H·N²·D for attention. ``--smoke`` runs the same code on CPU at tiny shapes, timed with
the wall clock (attention through the backend's CPU route, the torch reference of the kernel's quantisation;
linears through the FP8 reference path; the quantisation's torch side only, the kernel needing CUDA), to
check the script, not to measure anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from attention_jvp import time_ms as cuda_time_ms
from torch import nn

from rcm_registry import registry
from rcm_registry.engine.fp8_linear import (
    FP8,
    Fp8GeluMlp,
    Fp8Linear,
    fp8_linear_blocks,
    quantize_rows,
    scaled_mm_possible,
)

#: ``max_block`` that holds a Wan row of 8960 values whole: the quantisation kernel's former default, timed
#: beside the chunked default.
WHOLE_ROW = 16384

#: (B, H, N, D) of the attention, linear (in, out) shapes and the token count, per size.
SHAPES: dict[str, dict[str, Any]] = {
    "wan1.3b": {
        "attention": (1, 12, 32760, 128),
        "linears": {"ffn up": (1536, 8960), "ffn down": (8960, 1536), "projection": (1536, 1536)},
        "quantize": (1536, 8960),
        "tokens": 32760,
        "network": {"size": "1.3B"},
        "latent": (1, 16, 21, 60, 104),
        "text": (1, 512, 4096),
    },
    "smoke": {
        "attention": (1, 2, 200, 64),
        "linears": {"ffn up": (64, 96), "ffn down": (96, 64)},
        "quantize": (64, 96),
        "tokens": 40,
        "network": {"size": "tiny"},
        "latent": (1, 16, 2, 4, 4),
        "text": (1, 5, 32),
    },
}


def time_ms(fn: Callable[[], Any], reps: int, device: torch.device) -> float:
    """Median milliseconds a call: attention_jvp.py's CUDA-event timing on the GPU, the wall clock elsewhere."""
    if device.type == "cuda":
        return cuda_time_ms(fn, reps)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def bench_attention(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    b, h, n, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, n, h, d, generator=gen, device=device, dtype=dtype).transpose(1, 2) for _ in range(3))
    int8 = registry().build("attention", "int8_sage")
    int8_fp8pv = registry().build("attention", "int8_sage", pv="fp8")
    with torch.no_grad():
        sdpa = F.scaled_dot_product_attention(q, k, v)
        sdpa_ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps, device)
        int8_ms = time_ms(lambda: int8(q, k, v), reps, device)
        fp8pv_ms = time_ms(lambda: int8_fp8pv(q, k, v), reps, device)
        err, fp8pv_err = rel_err(int8(q, k, v), sdpa), rel_err(int8_fp8pv(q, k, v), sdpa)
    flops = 4.0 * b * h * n * n * d
    return {
        "shape": list(shape),
        "sdpa_ms": sdpa_ms,
        "int8_ms": int8_ms,
        "speedup": sdpa_ms / int8_ms,
        "sdpa_tflops": flops / sdpa_ms / 1e9,
        "int8_tflops": flops / int8_ms / 1e9,
        "rel_err_vs_sdpa": err,
        "int8_fp8pv_ms": fp8pv_ms,
        "fp8pv_speedup": sdpa_ms / fp8pv_ms,
        "fp8pv_rel_err_vs_sdpa": fp8pv_err,
    }


def torch_quantize_padded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fp8Linear's previous activation quantisation: torch quantize_rows, then a copy padding the rows to 16."""
    x8, scale = quantize_rows(x)
    pad = -x.shape[0] % 16
    if pad:
        x8 = F.pad(x8.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
        scale = F.pad(scale, (0, 0, 0, pad), value=1.0)
    return x8, scale


def torch_quant_fp8_linear(layer: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    """Fp8Linear's previous CUDA path: torch_quantize_padded, ``torch._scaled_mm``, a separate bias add."""
    x8, scale = torch_quantize_padded(x)
    y = torch._scaled_mm(
        x8, layer.weight_fp8.T, scale_a=scale, scale_b=layer.weight_scale.view(1, -1), out_dtype=torch.bfloat16
    )[: x.shape[0]].to(x.dtype)
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


def bench_linear(tokens: int, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    torch.manual_seed(0)
    layer = nn.Linear(n_in, n_out).to(device, dtype)
    fp8 = Fp8Linear.from_linear(layer)
    x = torch.randn(tokens, n_in, device=device, dtype=dtype)
    previous_ms = None
    with torch.no_grad():
        base_ms = time_ms(lambda: layer(x), reps, device)
        fp8_ms = time_ms(lambda: fp8(x), reps, device)
        err = rel_err(fp8(x), layer(x))
        if scaled_mm_possible(x):
            previous_ms = time_ms(lambda: torch_quant_fp8_linear(fp8, x), reps, device)
    flops = 2.0 * tokens * n_in * n_out
    return {
        "shape": [tokens, n_in, n_out],
        "bf16_ms": base_ms,
        "fp8_ms": fp8_ms,
        "speedup": base_ms / fp8_ms,
        "bf16_tflops": flops / base_ms / 1e9,
        "fp8_tflops": flops / fp8_ms / 1e9,
        "rel_err_vs_bf16": err,
        "fp8_torch_quant_ms": previous_ms,
    }


def bench_mlp(tokens: int, dim: int, hidden: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    """The feed-forward (Linear → GELU tanh → Linear): bf16, its two linears in FP8 one after the other,
    and the FP8 module whose GELU runs inside the hidden activation's quantisation (``Fp8GeluMlp``)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)).to(device, dtype)
    unfused = nn.Sequential(Fp8Linear.from_linear(mlp[0]), mlp[1], Fp8Linear.from_linear(mlp[2]))
    fused = Fp8GeluMlp(Fp8Linear.from_linear(mlp[0]), mlp[1], Fp8Linear.from_linear(mlp[2]))
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    with torch.no_grad():
        ms = {name: time_ms(lambda m=m: m(x), reps, device) for name, m in (("bf16", mlp), ("fp8", unfused),
              ("fp8_fused_gelu", fused))}  # fmt: skip
        exact = mlp(x)
        errors = {name: rel_err(m(x), exact) for name, m in (("fp8", unfused), ("fp8_fused_gelu", fused))}
    return {
        "shape": [tokens, dim, hidden],
        **{f"{name}_ms": value for name, value in ms.items()},
        "speedup_fused_vs_bf16": ms["bf16"] / ms["fp8_fused_gelu"],
        "speedup_fused_vs_fp8": ms["fp8"] / ms["fp8_fused_gelu"],
        **{f"rel_err_{name}_vs_bf16": value for name, value in errors.items()},
    }


def bench_quantize(tokens: int, width: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    """The activation quantisation alone: torch (quantize_rows and the padding copy) against the fused kernel."""
    x = torch.randn(tokens, width, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    torch_ms = time_ms(lambda: torch_quantize_padded(x), reps, device)
    # Read and written once by the kernel: the input, the e4m3 bytes and the scales.
    moved = x.numel() * (x.element_size() + 1) + 4 * x.shape[0]
    entry: dict[str, Any] = {"shape": [tokens, width], "torch_ms": torch_ms, "kernel_ms": None}
    if device.type == "cuda":
        from rcm_kernels.fp8_quantize import quantize_rows_fp8

        kernel_ms = time_ms(lambda: quantize_rows_fp8(x), reps, device)
        want8, want_scale = torch_quantize_padded(x)
        got8, got_scale = quantize_rows_fp8(x)
        entry.update(
            kernel_ms=kernel_ms,
            speedup=torch_ms / kernel_ms,
            kernel_tb_per_s=moved / kernel_ms / 1e9,
            bit_identical=torch.equal(got8.view(torch.uint8), want8.view(torch.uint8))
            and torch.equal(got_scale, want_scale),
        )
        # The default chunks rows of more than MAX_BLOCK values; held whole, a row pads its width to a power of
        # two (8960 → 16384 lanes, 45 % idle) and takes 16 warps.
        whole_ms = time_ms(lambda: quantize_rows_fp8(x, max_block=WHOLE_ROW), reps, device)
        whole8, whole_scale = quantize_rows_fp8(x, max_block=WHOLE_ROW)
        entry.update(
            whole_row_ms=whole_ms,
            whole_row_tb_per_s=moved / whole_ms / 1e9,
            whole_row_identical=torch.equal(whole8.view(torch.uint8), got8.view(torch.uint8))
            and torch.equal(whole_scale, got_scale),
        )
    return entry


def bench_network(size: dict[str, Any], dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    """One forward of the network with each option: own (sdpa), int8_sage (P·V in bf16 and in FP8), FP8
    linears, and each int8_sage with FP8 linears."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(size["latent"], generator=gen, device=device, dtype=dtype)
    text = torch.randn(size["text"], generator=gen, device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    results: dict[str, Any] = {}
    reference = None
    fp8pv = {"use": "int8_sage", "pv": "fp8"}
    for name, attention, fp8 in (
        ("sdpa", {"use": "sdpa"}, False),
        ("int8_sage", {"use": "int8_sage"}, False),
        ("int8_sage_fp8pv", fp8pv, False),
        ("fp8_linear", {"use": "sdpa"}, True),
        ("int8_sage+fp8_linear", {"use": "int8_sage"}, True),
        ("int8_sage_fp8pv+fp8_linear", fp8pv, True),
    ):
        torch.manual_seed(0)  # the same random weights for every option
        net = registry().build("network", "wan2.1-t2v", **size["network"], attention=attention)
        net = net.to(device, dtype).eval().requires_grad_(False)
        if fp8:
            fp8_linear_blocks(net)
        with torch.no_grad():
            ms = time_ms(lambda net=net: net(x, t, text), reps, device)
            out = net(x, t, text)
        if reference is None:
            reference = out
        results[name] = {"ms": ms, "rel_err_vs_sdpa": rel_err(out, reference)}
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = results["sdpa"]["ms"]
    for entry in results.values():
        entry["speedup"] = base / entry["ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-network", dest="network", action="store_false", help="skip the network forwards")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        device, dtype, size, reps = torch.device("cpu"), torch.float32, SHAPES["smoke"], 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs CUDA (or --smoke for the CPU check)")
        device, dtype, size, reps = torch.device("cuda"), torch.bfloat16, SHAPES["wan1.3b"], args.reps
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "attention": bench_attention(size["attention"], dtype, device, reps),
        "linear": {
            name: bench_linear(size["tokens"], n_in, n_out, dtype, device, reps)
            for name, (n_in, n_out) in size["linears"].items()
        },
        "mlp": bench_mlp(size["tokens"], *size["linears"]["ffn up"], dtype, device, reps),
        "quantize": {
            f"K={width}": bench_quantize(size["tokens"], width, dtype, device, reps) for width in size["quantize"]
        },
    }
    if args.network:
        results["network"] = bench_network(size, dtype, device, reps)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
