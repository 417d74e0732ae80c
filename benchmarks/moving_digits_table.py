"""The moving-digits table: the 50-step CFG teacher against sCM, dCM, DMD and rCM students at 1, 2 and 4 steps.

    python benchmarks/moving_digits_table.py --size tiny [--runs runs/moving_digits_tiny] [--num 200]   # CPU
    python benchmarks/moving_digits_table.py --size gpu --device cuda [--runs runs/moving_digits]       # GPU

Trains what is missing first, in order: the two feature networks the recipes' metrics read (the digit
classifier, `train_digit_classifier.py`, and the video classifier for the recipes' clip geometry,
`train_video_classifier.py`), the teacher (`recipes/moving_digits/teacher{_tiny}.yaml`) and each student
(`{method}{_tiny}.yaml`, the teacher's run as its teacher); `--set K=V` goes to every `rcm run` (a smoke run:
`--set run.iterations=20`), `--train-only` stops after training. Then every row samples `--num` clips per
seed with the run's EMA weights (classes cycling 0..9, directions every tenth clip) and scores them with
the recipes' metrics; the table gives mean ± standard deviation over the seeds. NFE counts network
evaluations per clip (the teacher's CFG doubles them); wall time is the sampler call alone. Writes
benchmarks/moving_digits_table.md and benchmarks/moving_digits_strips.png (per row four clips, each a strip
of its frames, seed 0).

Low-precision inference rows: `--lowprec int8_attention fp8_linear both` samples the `--lowprec-method` student
(default rCM) at `--lowprec-steps` (default 4) once more per option (`int8_sage` attention, FP8 linear layers,
both; see README "Low-precision sampling"), after a row of the same student with its own precision and `sdpa`
attention; those rows get one more column, the video FD of their clips against that row's clips of the same
seed (same noise and conditions), which isolates what the 8-bit arithmetic costs.

Rows sampled on separate machines can be joined: `--save-rows part.json` writes them (`--no-reference`
leaves out the data and teacher rows), `--from-rows a.json b.json` renders the table and strips from such
files without sampling (as digits_table.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from digits_table import (
    Row,
    add_alt_mid_times,
    alt_schedule_rows,
    labelled_pictures,
    load_rows,
    sample_with_sdpa,
    save_rows,
    summary,
)
from PIL import Image
from rcm_plugins.digits._video_common import VideoClassifierConfig, video_features
from rcm_plugins.digits.features import frechet_distance
from safetensors import safe_open

from rcm_registry import registry
from rcm_registry.engine.pictures import video_strips_png
from rcm_registry.engine.run_layout import checkpoint_at
from rcm_registry.engine.sampling import LoadedRun, draw, open_checkpoint
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RECIPES = REPO / "recipes/moving_digits"
NAMES = {"scm": "sCM", "dcm": "dCM", "dmd": "DMD", "rcm": "rCM"}
COLUMNS = (
    ("video_fd", "video FD ↓"),
    ("frame_fd", "frame FD ↓"),
    ("accuracy", "class acc. ↑"),
    ("direction_accuracy", "direction acc. ↑"),
    ("temporal_consistency", "temporal consistency ↑"),
    ("motion_error", "motion error (px) ↓"),
    ("precision", "precision ↑"),
    ("recall", "recall ↑"),
    ("diversity", "diversity"),
    ("video_fd_vs_full", "video FD vs own precision ↓"),
)
#: ``--lowprec`` choices: the row label and the inference options (attention backend, FP8 linears).
LOWPREC: dict[str, tuple[str, dict[str, Any]]] = {
    "int8_attention": ("int8 attention", {"attention": "int8_sage"}),
    "int8_fp8pv": ("int8 attention, fp8 P·V", {"overrides": ["inference.attention={use: int8_sage, pv: fp8}"]}),
    "fp8_linear": ("fp8 linear", {"fp8_linear": True}),
    "both": ("int8 attention + fp8 linear", {"attention": "int8_sage", "fp8_linear": True}),
}
#: Clips shown per picture row: classes 0, 1, 2, 3 with directions 0, 1, 2, 3 (conditions cycle that way).
PICTURE_CLIPS = (0, 11, 22, 33)


def recipe(size: str, name: str) -> Path:
    return RECIPES / (f"{name}_tiny.yaml" if size == "tiny" else f"{name}.yaml")


def rcm(*args: str) -> None:
    print("+ rcm " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "rcm_registry.cli", *args], check=True)


def train_missing(args: argparse.Namespace) -> None:
    """Feature networks, teacher and students, each unless its output is already there.

    The feature networks train in processes of their own beside the runs (the digit classifier on the CPU);
    the runs need them only when they are sampled.
    """
    sets = [a for s in args.set for a in ("--set", s)]
    path = recipe(args.size, "teacher")
    body = validate_recipe(load_recipe(path, args.set), registry(), str(path)).body
    data = body.data.config
    jobs = []
    for spec in body.metrics:
        weights = getattr(spec.config, "classifier", None)
        if weights is None or Path(weights).is_file() or any(weights == w for w, _ in jobs):
            continue
        if isinstance(spec.config, VideoClassifierConfig):
            geometry = [f"--frames={data.frames}", f"--canvas={data.canvas}", f"--digit-size={data.digit_size}",
                        f"--directions={data.directions}", "--speed", *map(str, data.speed)]  # fmt: skip
            command = [str(ROOT / "train_video_classifier.py"), "--out", weights, "--device", args.device, *geometry]
        else:
            command = [str(ROOT / "train_digit_classifier.py"), "--out", weights]
        print("+ python " + " ".join(command), flush=True)
        jobs.append((weights, subprocess.Popen([sys.executable, *command])))
    if not (args.runs / "teacher").is_dir():
        rcm("run", str(recipe(args.size, "teacher")), "--out", str(args.runs / "teacher"), "--no-progress", *sets)
    for method in args.methods:
        out = args.runs / method
        # --resume continues a run a time cap stopped, from its newest checkpoint (none yet: from the start).
        resume = args.resume and out.is_dir()
        if resume or not out.is_dir():
            teacher = f"networks.teacher.weights.path={args.runs / 'teacher'}"
            rcm("run", str(recipe(args.size, method)), "--out", str(out), "--no-progress", *sets,
                "--set", teacher, *(["--resume"] if resume else []))  # fmt: skip
    for weights, job in jobs:
        if job.wait() != 0:
            raise SystemExit(f"training the feature network {weights} failed (exit code {job.returncode})")


def data_row(teacher: LoadedRun, seeds: list[int], num: int) -> list[dict[str, float]]:
    """Real clips, a fresh draw per seed, scored like a model: the floor each metric can reach.

    The clips have the model rows' conditions (classes in turn, then directions: ``dataset.conditions``),
    with fresh images, starts and speeds. Drawn with random conditions instead, 250 clips hold each class and
    direction in uneven numbers, and that alone lifts their video FD against the reference set to about 17,
    twice the teacher's (benchmarks/moving_digits_table.md).
    """
    dataset = teacher.dataset
    asked, _ = dataset.conditions(num, torch.Generator())
    rows = []
    for seed in seeds:
        motion = dataset.draw_motion(num, torch.Generator().manual_seed(10_000 + seed), condition=asked)
        clips, labels = dataset.render(motion), dataset.motion_condition(motion)
        condition = {k: labels[k] for k in dataset.config.label_vocabulary()}
        row: dict[str, float] = {}
        for spec in teacher.recipe.body.metrics:
            row.update(spec.build()(clips, condition, dataset))
        rows.append(row)
    return rows


def collect(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, torch.Tensor]]]:
    table: list[Row] = []
    pictures: list[tuple[str, torch.Tensor]] = []
    teacher = open_checkpoint(args.runs / "teacher", device=args.device)
    guidance = teacher.recipe.body.sample.config.guidance
    num = max(args.num, max(PICTURE_CLIPS) + 1)

    def measure(
        run: LoadedRun,
        name: str,
        steps: int,
        nfe: int,
        against: dict[int, torch.Tensor] | None = None,
        **overrides: object,
    ) -> dict[int, torch.Tensor]:
        """Sample and score one row; ``against``: per seed the clips to measure a video FD against."""
        draw(run, 4, steps=steps, seed=0, **overrides)  # untimed: one-off set-up stays out of the wall time
        per_seed, seconds, clips = [], [], {}
        for seed in args.seeds:
            result = draw(run, num, steps=steps, seed=seed, **overrides)
            clips[seed] = result.samples
            if against is not None:
                result.metrics["video_fd_vs_full"] = video_fd_between(run, result.samples, against[seed])
            per_seed.append(result.metrics)
            seconds.append(result.seconds)
            if seed == args.seeds[0]:
                label = f"{name}, {steps} step{'s' if steps > 1 else ''}"
                pictures.append((label, result.samples[list(PICTURE_CLIPS)]))
            print(f"{name:>24} steps {steps:>2} seed {seed}: {result.metrics} {result.seconds:.2f} s", flush=True)
        table.append((name, steps, nfe, per_seed, seconds))
        return clips

    if args.reference:
        table.append(("data (real clips)", 0, 0, data_row(teacher, args.seeds, num), [0.0] * len(args.seeds)))
        motion = teacher.dataset.draw_motion(len(PICTURE_CLIPS), torch.Generator().manual_seed(10_000))
        pictures.append(("data", teacher.dataset.render(motion)))
        sample_with_sdpa(teacher)
        measure(teacher, f"teacher (Euler, CFG {guidance:g})", args.teacher_steps, 2 * args.teacher_steps)
    for method in args.methods:
        run, name = open_student(args, method)
        sample_with_sdpa(run)
        for steps in args.steps:
            measure(run, name, steps, steps)
        alt_schedule_rows(measure, run, name, args.steps, args.alt_mid_times)
    if args.lowprec:
        method, steps = args.lowprec_method, args.lowprec_steps
        run, name = open_student(args, method)
        sample_with_sdpa(run)
        full = measure(run, f"{name}, own precision", steps, steps)
        for choice in args.lowprec:
            label, options = LOWPREC[choice]
            run, _ = open_student(args, method, **options)
            if run.inference.attention is None:  # the network's own attention, sampled as above
                sample_with_sdpa(run)
            measure(run, f"{name}, {label}", steps, steps, against=full)
    return table, pictures


def open_student(args: argparse.Namespace, method: str, **options: Any) -> tuple[LoadedRun, str]:
    """A student's run at ``--iteration`` (else its newest checkpoint) and its row label, which names the
    iteration: rows of runs of different lengths stay told apart in a joined table."""
    target = args.runs / method
    if args.iteration is not None:
        try:
            target = checkpoint_at(target, args.iteration)
        except FileNotFoundError as err:
            raise SystemExit(f"--iteration: {err}") from None
    run = open_checkpoint(target, device=args.device, **options)
    assert run.checkpoint is not None
    return run, f"{NAMES.get(method, method)} ({run.checkpoint.iteration} it.)"


def video_fd_between(run: LoadedRun, clips: torch.Tensor, reference: torch.Tensor) -> float:
    """Video FD of ``clips`` against ``reference`` clips in the recipe's video classifier."""
    config = next(spec.config for spec in run.recipe.body.metrics if spec.name == "moving_digits_video_fd")
    return frechet_distance(video_features(config, clips)[0], video_features(config, reference)[0])


def labelled_strips(rows: list[tuple[str, torch.Tensor]], scale: int = 3) -> Image.Image:
    """One block per model: its clips as strips of frames, one clip a line, its name on the left."""
    return labelled_pictures([(name, video_strips_png(clips, scale=scale)) for name, clips in rows], gap=8)


def render(metas: list[dict[str, object]], table: list[Row]) -> str:
    first = metas[0]
    commands = "; ".join(f"`{m['command']}` ({m['seconds']:.0f} s)" for m in metas)
    wall = (
        "one CPU thread, other jobs sharing the machine, so wall times are rough"
        if first["device"] == "cpu"
        else f"on {first['device_name']} (whether rows shared the device with other jobs: RESULTS.md)"
    )
    accuracy = first["video_classifier_accuracy"]
    lines = [
        "# Moving digits: teacher vs distilled students",
        "",
        f"{commands} on {first['machine']}, torch {first['torch']}, {first['date']}; recipes of size "
        f"`{first['size']}` ({first['geometry']}).",
        "",
        f"{first['num']} clips per row and seed (classes 0–9 in turn, directions every tenth clip), mean ± std "
        f"over seeds {', '.join(map(str, first['seeds']))}. Video FD: Fréchet distance of the 3-D video "
        "classifier's features against the dataset's reference clips; frame FD: the same for every frame's "
        "digit crop in the digit classifier's features; class / direction accuracy: the video classifier "
        "reads the asked class / initial direction; temporal consistency: share of clips whose frames the "
        "digit classifier reads as one class; motion error: RMS distance of the digit's intensity centroid "
        "from its best-fit constant-velocity track with bounces; precision / recall: k-NN manifolds (k = 3) "
        "in video features against as many real clips; diversity: within-class mean pairwise video-feature "
        "distance relative to the data's. The data row scores fresh real clips under the same conditions. "
        f"Wall time: the sampler call for all clips of a row, {wall}; `sdpa` attention for every network.",
        "",
        f"Feature networks: {first['digit_classifier']} (`benchmarks/train_digit_classifier.py`) and "
        f"{first['video_classifier']} (`benchmarks/train_video_classifier.py`; held-out class accuracy "
        f"{accuracy.get('class_accuracy', float('nan')):.4f}, direction accuracy "
        f"{accuracy.get('direction_accuracy', float('nan')):.4f} on clips of the 20 % test digits).",
        "",
        "| model | steps | NFE | " + " | ".join(title for _, title in COLUMNS) + " | wall time (s) |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in COLUMNS) + " | ---: |",
    ]
    for name, steps, nfe, per_seed, seconds in table:
        cells = [summary([m[c] for m in per_seed]) if c in per_seed[0] else "–" for c, _ in COLUMNS]
        wall_cell = summary(seconds) if nfe else "–"
        lines.append(f"| {name} | {steps or '–'} | {nfe or '–'} | {' | '.join(cells)} | {wall_cell} |")
    return "\n".join(lines) + "\n"


def meta(args: argparse.Namespace, started: float) -> dict[str, object]:
    teacher = open_checkpoint(args.runs / "teacher", device="cpu")
    paths = {spec.name: spec.config for spec in teacher.recipe.body.metrics}
    video = paths["moving_digits_video_fd"].classifier
    with safe_open(video, "pt") as f:
        accuracy = json.loads((f.metadata() or {}).get("test_accuracy", "{}"))
    data = teacher.dataset.config
    device = torch.device(args.device)
    return {
        "command": "python benchmarks/moving_digits_table.py " + " ".join(sys.argv[1:]),
        "seconds": time.time() - started,
        "machine": platform.processor() or platform.machine(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "size": args.size,
        "geometry": f"{data.frames} frames of {data.canvas}x{data.canvas}, digits {data.digit_size}x{data.digit_size}",
        "num": max(args.num, max(PICTURE_CLIPS) + 1),
        "seeds": args.seeds,
        "digit_classifier": paths["moving_digits_frame_fd"].classifier,
        "video_classifier": video,
        "video_classifier_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "gpu"], default="tiny", help="which recipes: *_tiny.yaml or not")
    parser.add_argument("--runs", type=Path, help="run folders (default runs/moving_digits, _tiny for tiny)")
    parser.add_argument("--methods", nargs="*", default=["scm", "dcm", "dmd", "rcm"], help="students, in --runs")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--teacher-steps", type=int, default=50)
    add_alt_mid_times(parser)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="cpu", help="where runs train and sample (cuda for the GPU size)")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="for every `rcm run`")
    parser.add_argument("--train-only", action="store_true", help="train what is missing, then stop")
    parser.add_argument("--resume", action="store_true", help="continue students' runs that stopped early")
    parser.add_argument("--no-train", dest="train", action="store_false", help="sample existing runs only")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="no data and teacher rows")
    parser.add_argument(
        "--iteration", type=int, help="sample each student's checkpoint of this iteration (default: its newest)"
    )
    parser.add_argument("--lowprec", nargs="*", default=[], choices=sorted(LOWPREC), help="low-precision rows")
    parser.add_argument("--lowprec-method", default="rcm", help="the student the --lowprec rows sample")
    parser.add_argument("--lowprec-steps", type=int, default=4, help="its sampler steps in those rows")
    parser.add_argument("--out", type=Path, default=ROOT / "moving_digits_table.md")
    parser.add_argument("--strips", type=Path, default=ROOT / "moving_digits_strips.png")
    parser.add_argument("--save-rows", type=Path, help="also write the rows as JSON, for --from-rows")
    parser.add_argument("--from-rows", type=Path, nargs="+", help="sample nothing: join these --save-rows files")
    args = parser.parse_args()
    args.runs = args.runs or Path("runs/moving_digits_tiny" if args.size == "tiny" else "runs/moving_digits")

    if args.from_rows:
        metas, table, pictures = load_rows(args.from_rows)
    else:
        started = time.time()
        if args.train:
            train_missing(args)
        if args.train_only:
            return
        table, pictures = collect(args)
        metas = [meta(args, started)]
        if args.save_rows:
            save_rows(args.save_rows, metas[0], table, pictures)
    text = render(metas, table)
    args.out.write_text(text)
    labelled_strips(pictures).save(args.strips)
    print(text)
    print(f"wrote {args.out} and {args.strips}")


if __name__ == "__main__":
    main()
