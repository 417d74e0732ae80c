"""What sCM's two tangent passes keep for the backward: the student's forward alone (``tangent_pass: separate``,
the JVP runs in a pass of its own without a graph) against its dual forward (``tangent_pass: fused``).

    python benchmarks/tangent_pass_memory.py                        # CPU: Wan2.1-1.3B blocks, short clip
    python benchmarks/tangent_pass_memory.py --device cuda --frames 21 --height 60 --width 104

Counts the bytes autograd saves for the backward (``torch.autograd.graph.saved_tensors_hooks``, each storage
once) over ``--blocks`` Wan2.1-1.3B blocks with random bf16 weights, and the same per block and per token,
so the figure scales to any clip length and depth (activations grow linearly in both; attention's are linear
in tokens too, since neither SDPA nor the kernels keep the score matrix). The fused pass keeps more than
the separate forward because forward-mode AD computes each op's tangent with autograd recording: the
tangent's products involve parameters that need grad, so they are saved for the backward as well.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcm_registry import registry
from rcm_registry.jvp import jvp_with_graph


def saved_bytes(fn: Any) -> int:
    """Bytes autograd saves for the backward while ``fn`` runs (a storage shared by several saves counts once)."""
    storages: dict[object, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        except RuntimeError:  # a tensor without an accessible storage (a dual wrapper): its own size
            storages[("tensor", id(t))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def build(args: argparse.Namespace) -> Any:
    """Wan2.1-1.3B's width and heads at ``--blocks`` blocks, bf16, random weights (attention: the recipes'
    ``triton_jvp`` on CUDA, ``math`` elsewhere)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(args.device):
            return registry().build(
                "network",
                "wan2.1-t2v",
                size="1.3B",
                num_layers=args.blocks,
                attention={"use": "triton_jvp" if args.device == "cuda" else "math"},
            )
    finally:
        torch.set_default_dtype(default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--frames", type=int, default=2, help="latent frames")
    parser.add_argument("--height", type=int, default=30, help="latent height")
    parser.add_argument("--width", type=int, default=52, help="latent width")
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build(args)
    arch = net.arch
    dev, bf16 = torch.device(args.device), torch.bfloat16
    shape = (1, arch.in_channels, args.frames, args.height, args.width)
    x_t = torch.randn(shape, device=dev, dtype=bf16)
    dx = torch.randn(shape, device=dev, dtype=bf16)
    text = torch.randn(1, args.text_len, arch.text_dim, device=dev, dtype=bf16)
    t = torch.full((1,), 0.9, device=dev, dtype=torch.float64)
    dt = torch.full((1,), math.cos(0.9) * math.sin(0.9), device=dev, dtype=torch.float64)
    teacher = registry().build("teacher", "rectified_flow", t_scale=1000.0)

    def student_F(x: Tensor, time: Tensor) -> Tensor:
        return teacher.denoise(net.train(), x, time, {"text": text})[1]

    separate = saved_bytes(functools.partial(student_F, x_t, t))
    fused = saved_bytes(lambda: jvp_with_graph(student_F, (x_t, t), (dx, dt)))
    patch = arch.patch_size
    tokens = (args.frames // patch[0]) * (args.height // patch[1]) * (args.width // patch[2])
    result = {
        "device": args.device,
        "blocks": args.blocks,
        "tokens": tokens,
        "separate_bytes": separate,
        "fused_bytes": fused,
        "ratio": fused / separate,
        "separate_bytes_per_block_token": separate / args.blocks / tokens,
        "fused_bytes_per_block_token": fused / args.blocks / tokens,
    }
    print(
        f"{args.blocks} Wan2.1-1.3B blocks, {tokens} tokens, {args.device}: saved for the backward "
        f"{separate / 2**20:.1f} MiB (student forward) vs {fused / 2**20:.1f} MiB (dual forward), "
        f"{fused / separate:.2f}×; per block and token {separate / args.blocks / tokens / 1024:.1f} vs "
        f"{fused / args.blocks / tokens / 1024:.1f} KiB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
