"""``rcm synth RECIPE --prompts FILE --out DIR``: sample the recipe's teacher for every prompt into latent shards.

Resumable: a rerun continues an existing dataset directory (see rcm_registry.synth).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcm_registry.commands._shared import add_command, add_set_argument, int_list
from rcm_registry.errors import UserError

NAME = "synth"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_synth,
        summary="Sample the recipe's teacher for every prompt and write latent shards (resumable: rerun to continue).",
        example=(
            "rcm synth recipes/wan2.1/t2v_1.3b_rcm.yaml --prompts prompts.txt --shape 16,21,60,104 "
            "--out data/synth \\\n"
            "    --set networks.teacher.weights.path=/models/Wan2.1-T2V-1.3B-Diffusers/transformer \\\n"
            "    --set codecs.text.path=/models/Wan2.1-T2V-1.3B-Diffusers/text_encoder"
        ),
    )
    p.add_argument("recipe", help="a recipe whose teacher network (with weights) and codecs.text are used")
    p.add_argument(
        "--prompts", required=True, help="prompts: .txt (one a line), .jsonl ({prompt}), or .safetensors embeddings"
    )
    p.add_argument(
        "--conditions",
        help="network conditions besides the text (Wan I2V, Cosmos Video2World): a .safetensors file of "
        "cond.NAME tensors, one row per prompt",
    )
    p.add_argument("--out", required=True, help="dataset directory (created; an existing one is continued)")
    p.add_argument("--shape", help="latent shape of one sample C,T,H,W (e.g. 16,21,60,104: 81 frames at 480p)")
    p.add_argument(
        "--sampler",
        default="trigflow_euler",
        help="a registry sampler (rcm list sampler) reading the teacher through teacher_wrapper: trigflow_euler "
        "(default) or trigflow_unipc (Wan's; second order)",
    )
    p.add_argument("--steps", type=int, default=None, help="the sampler's steps (trigflow_*: default 50)")
    p.add_argument(
        "--shift", type=float, default=None, help="the sampler's time shift of its grid (trigflow_*: 5; Wan 480p: 3)"
    )
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: teacher_wrapper.guidance)")
    p.add_argument("--negative-prompt", default="", help="the negative prompt for CFG (default: empty)")
    p.add_argument(
        "--sigma-max", type=float, default=None, help="the sampler's sigma_max: start at atan(sigma_max), not π/2"
    )
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard (default 64)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts sampled together (default 1)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; prompt i always gets the same noise")
    p.add_argument("--store-dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="dtype on disk")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="teacher compute (default: the recipe's run.precision)",
    )
    p.add_argument("--max-shards", type=int, default=None, help="stop after writing this many shards")
    p.add_argument("--network", default="teacher", help="network role to sample (default: teacher)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p, help="override a recipe value (repeatable)")
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    from rcm_registry.synth import SynthSettings, open_synth, synthesise

    positive = {"--steps": args.steps, "--shard-size": args.shard_size, "--batch-size": args.batch_size}
    positive["--max-shards"] = args.max_shards
    for option, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a file, not a dataset directory")
    shape = int_list(args.shape, "--shape")
    if shape is None:
        raise UserError("--shape C,T,H,W is required: the latent shape of one sample (e.g. 16,21,60,104 for 480p)")
    conditions = Path(args.conditions) if args.conditions is not None else None
    recipe, store, prompts = open_synth(args.recipe, args.set, Path(args.out), Path(args.prompts), conditions)
    options = {"steps": args.steps, "shift": args.shift, "guidance": args.guidance, "sigma_max": args.sigma_max}
    settings = SynthSettings(
        shape=shape,
        sampler=args.sampler,
        sampler_options={k: v for k, v in options.items() if v is not None},
        negative_prompt=args.negative_prompt,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        seed=args.seed,
        store_dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.store_dtype],
        precision=args.precision,
    )
    result = synthesise(
        recipe,
        store,
        prompts,
        settings,
        role=args.network,
        device=args.device,
        max_shards=args.max_shards,
        progress=not args.no_progress,
    )
    print(
        f"wrote {result.written} shard(s), {result.skipped} already done, {result.remaining} left: "
        f"{result.samples} samples in {result.shards} shards under {args.out}"
    )
    return 0
