"""``rcm generate TARGET --prompt TEXT --out FILE``: a video, image or latents from a run's student.

The recipe's codecs encode the prompt and decode the latents (see rcm_registry.generate). ``--weights
CHECKPOINT`` generates with other weights for the student (an rCM release ``.pt``, ...); TARGET may then be a
recipe file, whose codecs, sampler and network config are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rcm_registry.commands._shared import (
    add_command,
    add_inference_arguments,
    add_set_argument,
    add_weights_argument,
    int_list,
)
from rcm_registry.errors import UserError

if TYPE_CHECKING:
    from rcm_registry.engine.sampling import LoadedRun
    from rcm_registry.generate import Generated

NAME = "generate"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_generate,
        summary="Generate a video (or image, or latents) for a prompt with a run's student and the recipe's codecs.",
        example='rcm generate runs/wan-1.3b --prompt "a red fox in the snow" --steps 4 --out fox.mp4',
    )
    p.add_argument(
        "target", help="a run directory (latest checkpoint) or a checkpoint folder (with --weights: or a recipe file)"
    )
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="FILE.mp4 (needs imageio[ffmpeg]: the wan/cosmos extras), FILE.png, or FILE.safetensors",
    )
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
    add_weights_argument(p)
    p.add_argument("--device", default="auto")
    add_inference_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print the wall time and peak device memory of each stage (text encoding, every transformer call, "
        "VAE decode, file write)",
    )
    p.add_argument("--profile-json", metavar="FILE.json", help="also write the profile as JSON (implies --profile)")
    p.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="move the text encoder to the CPU once the prompts are encoded (frees its device memory)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network before sampling (the first call compiles; pays off over repeated calls)",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs), max-autotune"
    )
    add_set_argument(
        p, help="override a value of the run's recipe, e.g. --set codecs.vae.path=/models/vae (repeatable)"
    )
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    from rcm_registry.conditions import load_conditions
    from rcm_registry.engine.progress import Progress
    from rcm_registry.engine.sampling import open_checkpoint
    from rcm_registry.generate import (
        OUTPUTS,
        check_video_writer,
        compile_network,
        generate,
        latent_shape,
    )
    from rcm_registry.profiling import StageProfiler

    out = Path(args.out)
    latents_only = args.latents_only or out.suffix == ".safetensors"
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory, not a file to write")
    if out.suffix not in OUTPUTS:
        raise UserError(f"--out {out}: the file must end in {', '.join(OUTPUTS)}")
    if latents_only and out.suffix != ".safetensors":
        raise UserError(f"--out {out}: --latents-only writes a .safetensors file")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if out.suffix == ".mp4" and not latents_only:
        check_video_writer(out)
    profile_json = Path(args.profile_json) if args.profile_json else None
    if profile_json is not None and (profile_json.is_dir() or not profile_json.parent.exists()):
        raise UserError(f"--profile-json {profile_json}: not a file in an existing folder")
    if args.steps is not None and not 1 <= args.steps <= 4:
        raise UserError(f"--steps {args.steps}: a distilled student samples in 1 to 4 steps")
    # The VAE is needed to decode, and to turn --frames/--height/--width into a latent shape.
    wanted = ("text", "vae") if not latents_only or args.frames is not None else ("text",)
    gen = open_checkpoint(
        Path(args.target),
        overrides=args.set,
        role=args.network,
        ema=not args.no_ema,
        device=args.device,
        codecs=wanted,
        weights=args.weights,
        attention=args.attention,
        fp8_linear=args.fp8_linear,
        cuda_graphs=args.cuda_graphs,
    )
    shape = latent_shape(gen, int_list(args.shape, "--shape"), args.frames, args.height, args.width)
    if args.compile:
        compile_network(gen, backend=args.compile_backend, mode=args.compile_mode)
    profiler = StageProfiler(gen.device, enabled=args.profile or profile_json is not None)
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
        profiler=profiler,
        offload_text_encoder=args.offload_text_encoder,
    )
    with profiler.stage(f"write {out.suffix[1:]}", "file write"):
        _write(args, out, result, latents_only, gen)
    print(
        f"wrote {out}: latents {list(shape)} from {gen.role} ({gen.weights_label()}, {gen.inference.describe()}), "
        f"sampling {result.seconds:.3f} s"
    )
    if profiler.enabled:
        print(profiler.table())
        if profile_json is not None:
            profiler.write_json(
                profile_json,
                prompt=args.prompt,
                latent_shape=list(shape),
                steps=total,
                network_calls=result.network_calls,
                compile=args.compile,
                cuda_graphs=gen.inference.cuda_graphs,
                offload_text_encoder=args.offload_text_encoder,
            )
            print(f"wrote {profile_json}")
    return 0


def _write(args: argparse.Namespace, out: Path, result: Generated, latents_only: bool, gen: LoadedRun) -> None:
    """Write the latents, the PNG contact sheet or the MP4 (its writer was checked before sampling)."""
    from rcm_registry.generate import contact_sheet, save_latents, save_png, save_video, to_frames

    if latents_only:
        meta = {"prompt": args.prompt, "seed": str(args.seed), "checkpoint": gen.source}
        save_latents(result.latents, out, meta)
        return
    assert result.video is not None
    frames = to_frames(result.video)
    if out.suffix == ".png":
        save_png(contact_sheet(frames), out)
    else:
        save_video(frames, out, args.fps)
