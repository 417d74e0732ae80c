"""``rcm sample RUN_DIR --out FILE``: sample a run's output network and print the recipe's metrics.

``--weights CHECKPOINT`` samples other weights for that network (an rCM release ``.pt``, a DCP directory,
any layout the network reads); RUN_DIR may then be a recipe file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command, add_inference_arguments, add_weights_argument
from rcm_registry.errors import UserError

NAME = "sample"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_sample,
        summary="Sample a run's output network (EMA weights) and print the recipe's metrics.",
        example="rcm sample runs/quickstart/teacher --steps 50 --num 2000 --out teacher.png",
    )
    p.add_argument("run_dir", help="a run directory written by `rcm run` (with --weights: or a recipe file)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    p.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="FILE.safetensors (tensor `samples`) or FILE.png (a picture)")
    p.add_argument("--network", default=None, help="network role to sample (default: the run's output network)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    add_weights_argument(p)
    p.add_argument("--sampler", default=None, help="a sampler other than the recipe's `sample:`")
    p.add_argument("--guidance", type=float, default=None, help="override the sampler's guidance scale")
    p.add_argument("--device", default="auto")
    add_inference_arguments(p)
    return p


def cmd_sample(args: argparse.Namespace) -> int:
    from rcm_registry.engine.pictures import samples_picture, save_png_atomic
    from rcm_registry.engine.sampling import draw, open_checkpoint

    for option, value in (("--steps", args.steps), ("--num", args.num)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory, not a file to write")
    if out.suffix not in (".safetensors", ".png"):
        raise UserError(f"--out {out}: the file must end in .safetensors or .png")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    run = open_checkpoint(
        Path(args.run_dir),
        role=args.network,
        ema=not args.no_ema,
        device=args.device,
        weights=args.weights,
        attention=args.attention,
        fp8_linear=args.fp8_linear,
        cuda_graphs=args.cuda_graphs,
    )
    overrides = {"guidance": args.guidance} if args.guidance is not None else {}
    result = draw(run, args.num, steps=args.steps, seed=args.seed, sampler=args.sampler, **overrides)
    if out.suffix == ".png":
        title = f"{run.role} ({run.weights_label()}), steps={args.steps}"
        picture = samples_picture(result.samples, result.condition, run.dataset, title, result.metrics)
        save_png_atomic(picture, out)
    else:
        from safetensors.torch import save_file

        from rcm_registry.atomic import atomic_file

        tensors = {"samples": result.samples.contiguous()}
        tensors.update({f"condition.{k}": v.contiguous() for k, v in result.condition.items()})
        with atomic_file(out) as tmp:
            save_file(tensors, str(tmp), metadata={"run": run.source, "network": run.role})
    print(f"wrote {out}: {args.num} samples from {run.role} ({run.weights_label()}, {run.inference.describe()})")
    print(f"sampling time: {result.seconds:.3f} s")
    for name, value in result.metrics.items():
        print(f"{name}: {value:.4f}")
    return 0
