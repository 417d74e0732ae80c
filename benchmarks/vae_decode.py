"""The Wan2.1 VAE decode alone, each decode option off → on: time, peak memory, throughput and distance.

    python benchmarks/vae_decode.py [--json out.json]        # CUDA: Wan2.1's VAE, 480p × 81 frames (and 720p)
    python benchmarks/vae_decode.py --smoke                  # CPU, a tiny VAE (tests run this)

The VAE is diffusers' ``AutoencoderKLWan`` at Wan2.1's published configuration with random weights (its
decode costs what the trained one's does), wrapped in the project's ``wan_vae`` codec with each set of
options (``plugins/data/_wan_vae.py``): fp32 frame by frame (diffusers' decode); bf16 in chunks of latent
frames; + channels-last convolutions and cuDNN's timed algorithms (the fastest set ``generate_e2e.py``
measured); + the causal 3-D convolutions as 2-D convolutions over frames (``decode_conv3d_as_2d``). Each row
is the median of ``--reps`` decodes of the same random latents after one warm-up decode, with the peak
device memory, TFLOP/s (the decode's FLOPs counted once on the meta device with
``torch.utils.flop_counter``) and the largest absolute difference of its pixels from the first bf16 row's and
from the fp32 row's (pixels in [−1, 1]; every weight is moved off its initial value by 0.05·N(0, 1), since
diffusers initialises some layers to zero and their paths would otherwise carry nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from generate_e2e import TINY_VAE, WAN_VAE  # Wan2.1's published VAE configuration, and a tiny one

from rcm_registry import registry


def variants(chunk: int) -> dict[str, dict[str, Any]]:
    fast = {"decode_dtype": "bf16", "decode_chunk_frames": chunk, "decode_channels_last": True}
    return {
        "fp32 frame by frame (diffusers)": {},
        f"bf16 in chunks of {chunk}": {"decode_dtype": "bf16", "decode_chunk_frames": chunk},
        f"bf16 in chunks of {chunk}, channels last, cuDNN benchmark": {**fast, "decode_cudnn_benchmark": True},
        f"bf16 in chunks of {chunk}, 3-D convolutions as 2-D": {
            "decode_dtype": "bf16", "decode_chunk_frames": chunk, "decode_conv3d_as_2d": True,
        },
        f"bf16 in chunks of {chunk}, channels last, cuDNN benchmark, 3-D convolutions as 2-D": {
            **fast, "decode_cudnn_benchmark": True, "decode_conv3d_as_2d": True,
        },
    }  # fmt: skip


def decode_flops(config: dict[str, Any], latent: tuple[int, ...]) -> float:
    """FLOPs of one decode of ``latent``, counted on the meta device (no memory, no time)."""
    import diffusers
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = diffusers.AutoencoderKLWan(**config)
        z = torch.empty(latent)
        with FlopCounterMode(display=False) as counter:
            vae.decode(z)
    return float(counter.get_total_flops())


def measure(codec: Any, latents: torch.Tensor, reps: int, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """Median seconds of ``reps`` decodes after one warm-up, the peak GiB, and the last decode's pixels."""
    video = codec.decode(latents)
    seconds = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(reps):
        start = time.perf_counter()
        video = codec.decode(latents)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else float("nan")
    return statistics.median(seconds), peak, video


def run_size(args: argparse.Namespace, config: dict[str, Any], frames: int, height: int, width: int) -> dict[str, Any]:
    import diffusers
    from rcm_plugins.data._wan_vae import WanVaeConfig, WanVideoCodec

    device = torch.device(args.device)
    torch.manual_seed(0)
    base = diffusers.AutoencoderKLWan(**config).eval()
    with torch.no_grad():  # away from diffusers' zero-initialised layers, so that every path carries signal
        for param in base.parameters():
            param.add_(0.05 * torch.randn_like(param))
    latent = (1, config["z_dim"], (frames - 1) // 4 + 1, height // 8, width // 8)
    flops = decode_flops(config, latent)
    latents = torch.randn(latent, generator=torch.Generator().manual_seed(1)).to(device)
    rows: dict[str, Any] = {}
    first_bf16: torch.Tensor | None = None
    fp32: torch.Tensor | None = None
    state = base.state_dict()
    for label, options in variants(args.chunk_frames).items():
        vae = diffusers.AutoencoderKLWan(**config).eval()
        vae.load_state_dict(state)
        stats = {"latents_mean": [0.0] * config["z_dim"], "latents_std": [1.0] * config["z_dim"]}
        codec = WanVideoCodec(WanVaeConfig(path="random", **stats, **options), "", "wan_vae", vae=vae).to(device)
        seconds, peak, video = measure(codec, latents, args.reps, device)
        video = video.float().cpu()
        if fp32 is None:
            fp32 = video
        elif first_bf16 is None:
            first_bf16 = video
        rows[label] = {
            "seconds": seconds,
            "peak_gib": peak,
            "tflops": flops / seconds / 1e12,
            "max_abs_vs_fp32": float((video - fp32).abs().max()),
            "max_abs_vs_bf16_chunks": None if first_bf16 is None else float((video - first_bf16).abs().max()),
        }
        print(
            f"  {label}: {seconds:.3f} s, peak {peak:.1f} GiB, {flops / seconds / 1e12:.0f} TFLOP/s, "
            f"max |Δ| vs fp32 {rows[label]['max_abs_vs_fp32']:.4f}",
            flush=True,
        )
        del codec, vae
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"frames": frames, "height": height, "width": width, "latent": list(latent), "flops": flops, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--chunk-frames", type=int, default=4)
    parser.add_argument("--no-720p", dest="big", action="store_false", help="480p only")
    parser.add_argument("--smoke", action="store_true", help="a tiny VAE on the CPU (checks the script)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    registry()  # the codec's plugins loaded as `rcm` loads them
    sizes = [(81, 480, 832)] + ([(81, 720, 1280)] if args.big else [])
    config = WAN_VAE
    if args.smoke:
        args.device, args.reps, args.chunk_frames, config, sizes = "cpu", 1, 2, TINY_VAE, [(9, 16, 24)]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device}
    result["torch"] = torch.__version__
    for frames, height, width in sizes:
        print(f"{frames} frames × {height} × {width}:", flush=True)
        result[f"{height}p"] = run_size(args, config, frames, height, width)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
