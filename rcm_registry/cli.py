"""The ``rcm`` command line. User errors print one readable message and exit with code 2."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from rcm_registry.component import KINDS
from rcm_registry.errors import UserError

EXIT_USER_ERROR = 2


def _load(recipe: str, overrides: Sequence[str]):
    from rcm_registry.plugin_loading import registry
    from rcm_registry.recipe.load import load_recipe
    from rcm_registry.recipe.validate import validate_recipe

    data = load_recipe(recipe, overrides)
    return validate_recipe(data, registry(), source=recipe)


def cmd_list(args: argparse.Namespace) -> int:
    from rcm_registry.plugin_loading import registry
    from rcm_registry.structure import suggest

    reg = registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.kind and args.kind not in KINDS:
        raise UserError(f"unknown kind {args.kind!r}{suggest(args.kind, KINDS)}")
    for kind in kinds:
        comps = list(reg.components(kind))
        if not comps and not args.kind:
            continue
        print(f"{kind}:")
        for comp in comps:
            origin = reg.origin(kind, comp.name)
            src = "" if origin.distribution == "rcm-registry" else f"  [{origin.distribution}]"
            print(f"  {comp.name:<24} {comp.summary}{src}")
        if not comps:
            print("  (none)")
    _report_failures(reg)
    return 0


def _report_failures(reg) -> None:
    for failure in reg.failures:
        print(
            f"warning: plugin {failure.name!r} from {failure.distribution} failed to load: {failure.error}",
            file=sys.stderr,
        )


def cmd_plugins(args: argparse.Namespace) -> int:
    from rcm_registry.plugin_loading import DISABLE_AUTOLOAD_ENV, registry

    reg = registry()
    print(f"{'plugin':<16} {'distribution':<28} {'version':<10} components")
    for info in sorted(reg.plugins, key=lambda p: (p.distribution, p.name)):
        print(f"{info.name:<16} {info.distribution:<28} {info.version:<10} {len(info.components)}")
    for failure in reg.failures:
        print(f"{failure.name:<16} {failure.distribution:<28} {'-':<10} FAILED: {failure.error}")
    if os.environ.get(DISABLE_AUTOLOAD_ENV):
        print(f"({DISABLE_AUTOLOAD_ENV} is set: third-party plugins are not loaded)")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import json

    from rcm_registry.environment import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = _load(args.recipe, args.set)
    roles = ", ".join(f"{role}={net.spec.name}" for role, net in recipe.networks.items())
    phases = ", ".join(
        f"{name}({'+'.join(loss.name for loss in phase.losses)})" for name, phase in recipe.body.phases.items()
    )
    print(f"{args.recipe}: OK — networks: {roles}; phases: {phases}; {recipe.body.run.iterations} iterations")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rcm_registry.engine.logs import configure_console
    from rcm_registry.engine.trainer import Trainer, prepare_run_dir

    recipe = _load(args.recipe, args.set)  # validation first: a broken recipe creates no run directory
    configure_console(args.verbose)
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    resume_from = prepare_run_dir(run_dir, recipe, resume=args.resume)
    trainer = Trainer(recipe, run_dir, progress=not args.no_progress)
    if resume_from is not None:
        trainer.restore(resume_from)
    final = trainer.run()
    from rcm_registry.distributed import is_main

    if is_main():  # under torchrun every rank gets here; one line is enough
        print(f"done: {run_dir} (checkpoint {final})" if final else f"done: {run_dir} (nothing left to train)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from rcm_registry.engine.pictures import samples_picture, save_png_atomic
    from rcm_registry.engine.sampling import draw, open_run

    out = Path(args.out)
    if out.suffix not in (".safetensors", ".png"):
        raise UserError(f"--out {out}: the file must end in .safetensors or .png")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    run = open_run(Path(args.run_dir), role=args.network, ema=not args.no_ema, device=args.device)
    overrides = {"guidance": args.guidance} if args.guidance is not None else {}
    result = draw(run, args.num, steps=args.steps, seed=args.seed, sampler=args.sampler, **overrides)
    if out.suffix == ".png":
        title = f"{run.role} ({'EMA' if run.used_ema else 'raw'}), steps={args.steps}"
        save_png_atomic(samples_picture(result.samples, result.condition, run.dataset, title), out)
    else:
        from safetensors.torch import save_file

        tensors = {"samples": result.samples.contiguous()}
        tensors.update({f"condition.{k}": v.contiguous() for k, v in result.condition.items()})
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp), metadata={"run": str(run.checkpoint.path), "network": run.role})
        os.replace(tmp, out)
    print(f"wrote {out}: {args.num} samples from {run.role} ({'EMA' if run.used_ema else 'raw'} weights)")
    print(f"sampling time: {result.seconds:.3f} s")
    for name, value in result.metrics.items():
        print(f"{name}: {value:.4f}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rcm_registry.engine.logs import configure_console
    from rcm_registry.quickstart import format_table, run_quickstart

    configure_console(args.verbose)
    out = Path(args.out)
    rows = run_quickstart(out, args.recipes, args.num, progress=not args.no_progress)
    print(format_table(rows))
    print(f"pictures: {out}/teacher.png, {out}/rcm_1step.png, {out}/rcm_2step.png, {out}/rcm_4step.png")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from rcm_registry.engine.sampling import open_run

    run = open_run(Path(args.run_dir), role=args.network, ema=not args.no_ema, device="cpu")
    export = getattr(run.net, "export", None)
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


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated integers, e.g. 16,21,60,104") from None


def cmd_synth(args: argparse.Namespace) -> int:
    from rcm_registry.synth import SynthSettings, open_synth, synthesise

    shape = _ints(args.shape, "--shape")
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


def cmd_generate(args: argparse.Namespace) -> int:
    from rcm_registry.conditions import load_conditions
    from rcm_registry.engine.progress import Progress
    from rcm_registry.generate import (
        OUTPUTS,
        contact_sheet,
        generate,
        latent_shape,
        open_generator,
        save_latents,
        save_png,
        save_video,
        to_frames,
    )

    out = Path(args.out)
    latents_only = args.latents_only or out.suffix == ".safetensors"
    if out.suffix not in OUTPUTS:
        raise UserError(f"--out {out}: the file must end in {', '.join(OUTPUTS)}")
    if latents_only and out.suffix != ".safetensors":
        raise UserError(f"--out {out}: --latents-only writes a .safetensors file")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if args.steps is not None and not 1 <= args.steps <= 4:
        raise UserError(f"--steps {args.steps}: a distilled student samples in 1 to 4 steps")
    # The VAE is needed to decode, and to turn --frames/--height/--width into a latent shape.
    wanted = ("text", "vae") if not latents_only or args.frames is not None else ("text",)
    gen = open_generator(
        Path(args.target), overrides=args.set, role=args.network, ema=not args.no_ema, device=args.device, codecs=wanted
    )
    shape = latent_shape(gen, _ints(args.shape, "--shape"), args.frames, args.height, args.width)
    conditions = load_conditions(Path(args.conditions), 1) if args.conditions else {}
    sample = gen.recipe.body.sample
    total = args.steps or (getattr(sample.config, "steps", 1) if sample is not None else 1)
    bar = None if args.no_progress else Progress(total, every=1)
    result = generate(
        gen,
        args.prompt,
        shape,
        steps=args.steps,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        conditions=conditions,
        decode=not latents_only,
        progress=bar,
    )
    weights = "EMA" if gen.used_ema else "raw"
    if latents_only:
        meta = {"prompt": args.prompt, "seed": str(args.seed), "checkpoint": str(gen.checkpoint.path)}
        save_latents(result.latents, out, meta)
        written = [out]
    else:
        assert result.video is not None
        frames = to_frames(result.video)
        if out.suffix == ".png":
            save_png(contact_sheet(frames), out)
            written = [out]
        else:
            written = save_video(frames, out, args.fps)
            if written[0] != out:
                print(
                    f"imageio is not installed (pip install imageio[ffmpeg]): wrote PNG frames to {written[0].parent}"
                )
    print(
        f"wrote {written[0] if len(written) == 1 else written[0].parent}: latents {list(shape)} from {gen.role} "
        f"({weights} weights), sampling {result.seconds:.3f} s"
    )
    return 0


HELP = {
    "list": ("List registered components, optionally of one kind.", "rcm list loss"),
    "plugins": ("List loaded plugins with their distribution and version.", "rcm plugins"),
    "env": (
        "Report versions, devices and where the Triton kernels run here (for bug reports and set-up checks).",
        "rcm env --json",
    ),
    "validate": (
        "Check a recipe (and --set overrides) without allocating anything; lists every problem.",
        "rcm validate recipes/quickstart/teacher.yaml --set run.iterations=100",
    ),
    "run": (
        "Train a recipe into a run directory (checkpoints, metrics.jsonl).",
        "rcm run recipes/quickstart/teacher.yaml --out runs/quickstart/teacher",
    ),
    "export": (
        "Write a run's output network (EMA weights) as a diffusers or native checkpoint directory.",
        "rcm export runs/wan-1.3b --format diffusers --out wan-rcm-4step",
    ),
    "quickstart": (
        "Train the 2-D teacher (if needed), distil it with rCM, and compare samples at 1/2/4 steps.",
        "rcm quickstart --out runs/quickstart",
    ),
    "sample": (
        "Sample a run's output network (EMA weights) and print the recipe's metrics.",
        "rcm sample runs/quickstart/teacher --steps 50 --num 2000 --out teacher.png",
    ),
    "synth": (
        "Sample the recipe's teacher for every prompt and write latent shards (resumable: rerun to continue).",
        "rcm synth recipes/wan2.1/t2v_1.3b_rcm.yaml --prompts prompts.txt --shape 16,21,60,104 --out data/synth \\\n"
        "    --set networks.teacher.weights.path=/models/Wan2.1-T2V-1.3B-Diffusers/transformer \\\n"
        "    --set codecs.text.path=/models/Wan2.1-T2V-1.3B-Diffusers/text_encoder",
    ),
    "generate": (
        "Generate a video (or image, or latents) for a prompt with a run's student and the recipe's codecs.",
        'rcm generate runs/wan-1.3b --prompt "a red fox in the snow" --steps 4 --out fox.mp4',
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcm",
        description="Distil diffusion models into few-step students with rCM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        summary, example = HELP[name]
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=textwrap.dedent(f"example:\n  {example}"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("list", cmd_list)
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}")
    add("plugins", cmd_plugins)
    p = add("env", cmd_env)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, func in (("validate", cmd_validate), ("run", cmd_run)):
        p = add(name, func)
        p.add_argument("recipe", help="path to a YAML recipe")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe value, e.g. --set phases.student.optimizer.lr=1e-5 (repeatable)",
        )
        if name == "run":
            p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
            p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
            p.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    p = add("export", cmd_export)
    p.add_argument("run_dir", help="a run directory written by `rcm run`")
    p.add_argument("--format", choices=("diffusers", "native"), default="diffusers")
    p.add_argument("--out", required=True, help="output directory (written under a temporary name, then renamed)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16", help="weight dtype (default bf16)")
    p.add_argument("--network", default=None, help="network role (default: the run's output network)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p = add("quickstart", cmd_quickstart)
    p.add_argument("--out", default="runs/quickstart", help="folder for the two runs and the pictures")
    p.add_argument("--recipes", default=None, help="folder with teacher.yaml and rcm.yaml (default: the bundled)")
    p.add_argument("--num", type=int, default=2000, help="samples per evaluation (default 2000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    p = add("sample", cmd_sample)
    p.add_argument("run_dir", help="a run directory written by `rcm run`")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    p.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="FILE.safetensors (tensor `samples`) or FILE.png (a picture)")
    p.add_argument("--network", default=None, help="network role to sample (default: the run's output network)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--sampler", default=None, help="a sampler other than the recipe's `sample:`")
    p.add_argument("--guidance", type=float, default=None, help="override the sampler's guidance scale")
    p.add_argument("--device", default="auto")
    p = add("synth", cmd_synth)
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
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value (repeatable)"
    )
    p = add("generate", cmd_generate)
    p.add_argument("target", help="a run directory (latest checkpoint) or a checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="FILE.mp4 (PNG frames without imageio), FILE.png, or FILE.safetensors")
    p.add_argument("--steps", type=int, default=None, help="sampler steps, 1-4 (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latents-only", action="store_true", help="write the latents (.safetensors), no decoding")
    p.add_argument("--negative-prompt", default="", help="only used by samplers with guidance")
    p.add_argument(
        "--conditions",
        metavar="FILE.safetensors",
        help="the network's inputs besides the text (Wan I2V, Cosmos V2W) as cond.NAME tensors of one row",
    )
    p.add_argument("--shape", help="latent shape C,T,H,W (default: the training data's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (with --height, --width; needs the VAE)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--fps", type=int, default=16, help="frame rate of the MP4 (default 16, Wan's)")
    p.add_argument("--network", default=None, help="network role (default: the run's output network)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the run's recipe, e.g. --set codecs.vae.path=/models/vae (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
