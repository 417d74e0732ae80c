"""``rcm export RUN_DIR --out DIR``: write a run's output network as a diffusers or native checkpoint directory,
or (``--format rcm-release --out FILE.pt``) as the rCM release's ``net.``-prefixed ``.pt`` file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command
from rcm_registry.errors import UserError

NAME = "export"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_export,
        summary="Write a run's output network (EMA weights) as a diffusers or native checkpoint directory, or as "
        "an rCM release .pt file.",
        example="rcm export runs/wan-1.3b --format diffusers --out wan-rcm-4step\n"
        "  rcm export runs/wan-1.3b --format rcm-release --out wan-rcm-4step.pt",
    )
    p.add_argument("run_dir", help="a run directory written by `rcm run`")
    p.add_argument(
        "--format",
        choices=("diffusers", "native", "rcm-release"),
        default="diffusers",
        help="checkpoint layout (default diffusers); rcm-release: one FILE.pt of net.-prefixed native Wan2.1 "
        "keys, what the rCM release's inference script takes as --dit_path",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory, or FILE.pt for rcm-release (written under a temporary name, then renamed)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="bf16",
        help="weight dtype (default bf16, as the rCM release publishes its checkpoints)",
    )
    p.add_argument("--network", default=None, help="network role (default: the run's output network)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return p


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from rcm_registry.engine.sampling import open_checkpoint
    from rcm_registry.protocols import network_export

    # The weights as trained: the recipe's inference options (FP8 linears, CUDA graphs) are for sampling.
    run = open_checkpoint(Path(args.run_dir), role=args.network, ema=not args.no_ema, device="cpu", inference=False)
    export = network_export(run.net)
    if not callable(export):
        raise UserError(
            f"network {run.recipe.networks[run.role].spec.name!r} ({run.role}) has no export; "
            "its checkpoint weights are in the run's model.safetensors / ema.safetensors"
        )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    try:
        path = export(Path(args.out), format=args.format, dtype=dtype, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        raise UserError(f"--out {args.out}: {exc}") from None
    print(
        f"wrote {path}: {run.role} ({'EMA' if run.used_ema else 'raw'} weights) in {args.format} layout, {args.dtype}"
    )
    return 0
