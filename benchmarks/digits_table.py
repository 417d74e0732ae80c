"""The digits table: the 50-step CFG teacher against sCM, dCM, DMD and rCM students at 1, 2 and 4 steps.

    python benchmarks/train_digit_classifier.py
    rcm run recipes/digits/teacher.yaml --out runs/digits/teacher
    for m in scm dcm dmd rcm; do rcm run recipes/digits/$m.yaml --out runs/digits/$m; done
    python benchmarks/digits_table.py [--runs runs/digits] [--num 1000] [--seeds 0 1 2]

Every row samples ``--num`` images (classes cycling 0..9) per seed with the run's EMA weights and scores
them with the recipes' metrics (classifier-feature Fréchet distance, accuracy against the condition,
k-NN precision/recall, within-class diversity); the table gives mean ± standard deviation over the
seeds. NFE counts network evaluations per sample (the teacher's CFG doubles them). Wall time is the
sampler call alone, on this machine, with the recipe's thread count. Writes benchmarks/digits_table.md
and benchmarks/digits_grid.png (two samples of each class per row, seed 0).

Runs trained on separate machines can be scored apart and joined: ``--save-rows part.json`` writes the
rows (``--no-reference`` leaves out the data and teacher rows), ``--from-rows a.json b.json`` renders the
table and grid from such files without sampling.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from rcm_plugins.wan.model import WanNetwork
from safetensors import safe_open

from rcm_registry import registry
from rcm_registry.engine.pictures import image_grid_png
from rcm_registry.engine.sampling import LoadedRun, draw, open_checkpoint

COLUMNS = ("fd", "accuracy", "precision", "recall", "diversity")
ROOT = Path(__file__).resolve().parent
NAMES = {
    "scm": "sCM",
    "dcm": "dCM",
    "dmd": "DMD",
    "rcm": "rCM",
    # Ablations: the DMD score from the guided teacher (CFG 2) instead of the unguided one.
    "dmd_cfg": "DMD, CFG-2 score",
    "rcm_cfg": "rCM, CFG-2 DMD score, weight 0.02",
}


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {spread:.3f}"


def by_class(samples: torch.Tensor, labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first ``per_class`` samples of each class 0..9, class-major."""
    picks = [samples[labels == c][:per_class] for c in range(10)]
    return torch.cat([torch.stack([p[i] for p in picks]) for i in range(per_class)])


def labelled_pictures(named: list[tuple[str, Image.Image]], gap: int) -> Image.Image:
    """The pictures one under another, ``gap`` pixels apart, each with its name on the left."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 12 + int(max(measure.textlength(name) for name, _ in named))
    width = margin + max(p.width for _, p in named)
    height = sum(p.height for _, p in named) + gap * len(named)
    canvas = Image.new("L", (width, height), 255)
    pen = ImageDraw.Draw(canvas)
    y = 0
    for name, picture in named:
        canvas.paste(picture, (margin, y))
        pen.text((4, y + picture.height // 2 - 6), name, fill=0)
        y += picture.height + gap
    return canvas


def labelled_grid(rows: list[tuple[str, torch.Tensor]], scale: int = 4) -> Image.Image:
    """One image row per model, its name on the left."""
    named = [(name, image_grid_png(images, columns=images.shape[0], scale=scale)) for name, images in rows]
    return labelled_pictures(named, gap=4)


def sample_with_sdpa(run: LoadedRun) -> None:
    """Give the run's Wan blocks the ``sdpa`` attention backend, as the teacher has.

    The distillation recipes give the student ``math`` attention because the sCM JVP needs forward-mode
    AD; sampling needs no JVP, and both backends compute the same function, so the wall times compare
    the same kernels.
    """
    sdpa = registry().build("attention", "sdpa")
    for module in run.net.modules():
        if isinstance(module, WanNetwork):
            module.attention = sdpa


# One table row: (name, steps, NFE, [metrics per seed], [seconds per seed]).
Row = tuple[str, int, int, list[dict[str, float]], list[float]]


def collect(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, torch.Tensor]]]:
    """Sample and score every row, with a picture row per model."""
    table: list[Row] = []
    pictures: list[tuple[str, torch.Tensor]] = []
    teacher = open_checkpoint(args.runs / "teacher", device=args.device)
    guidance = teacher.recipe.body.sample.config.guidance
    dataset = teacher.dataset

    def measure(run: LoadedRun, name: str, steps: int, nfe: int, **overrides: object) -> None:
        # One small untimed call first, so the row's wall time holds no one-off set-up (CUDA context and
        # library loading, kernel compilation on the first call of a process).
        draw(run, 10, steps=steps, seed=0, **overrides)
        per_seed, seconds = [], []
        for seed in args.seeds:
            result = draw(run, args.num, steps=steps, seed=seed, **overrides)
            per_seed.append(result.metrics)
            seconds.append(result.seconds)
            if seed == args.seeds[0]:
                pictures.append((f"{name}, {steps} step{'s' if steps > 1 else ''}",
                                 by_class(result.samples, result.condition["label"], 2)))  # fmt: skip
            print(f"{name:>10} steps {steps:>2} seed {seed}: {result.metrics} {result.seconds:.2f} s", flush=True)
        table.append((name, steps, nfe, per_seed, seconds))

    if args.reference:
        # The data itself, scored like a model (a random subset per seed): the floor each metric can reach.
        data_metrics = []
        for seed in args.seeds:
            pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[: args.num]
            row: dict[str, float] = {}
            for spec in teacher.recipe.body.metrics:
                row.update(spec.build()(dataset.x[pick], {"label": dataset.y[pick]}, dataset))
            data_metrics.append(row)
        table.append(("data (real digits)", 0, 0, data_metrics, [0.0] * len(args.seeds)))
        pictures.append(("data", by_class(dataset.x, dataset.y, 2)))
        measure(teacher, f"teacher (Euler, CFG {guidance:g})", args.teacher_steps, 2 * args.teacher_steps)
        for other in args.teacher_guidance:
            # For context: the same teacher at another guidance scale (1: no CFG, one call per step).
            name = "teacher (Euler, no CFG)" if other == 1.0 else f"teacher (Euler, CFG {other:g})"
            nfe = args.teacher_steps * (1 if other == 1.0 else 2)
            measure(teacher, name, args.teacher_steps, nfe, guidance=other)
    for method in args.methods:
        run = open_checkpoint(args.runs / method, device=args.device)
        sample_with_sdpa(run)
        for steps in args.steps:
            measure(run, NAMES.get(method, method), steps, steps)
        alt_schedule_rows(measure, run, NAMES.get(method, method), args.steps, args.alt_mid_times)
    return table, pictures


def alt_schedule_rows(
    measure: Callable[..., object],
    run: object,
    name: str,
    steps: list[int],
    schedules: list[list[float]] | None,
) -> None:
    """The same student's multi-step rows with other sampler schedules (each ``--alt-mid-times``): those rows
    depend on it. ``measure(run, name, steps, nfe, mid_times=...)`` samples and scores one row."""
    for mid_times in schedules or []:
        label = "/".join(f"{t:g}" for t in mid_times)
        for n in (s for s in steps if 1 < s <= len(mid_times) + 1):
            measure(run, f"{name}, mid times {label}", n, n, mid_times=list(mid_times))


def add_alt_mid_times(parser: argparse.ArgumentParser) -> None:
    """``--alt-mid-times T1 T2 ...``, repeatable: each gives every student another set of multi-step rows."""
    parser.add_argument(
        "--alt-mid-times",
        type=float,
        nargs="+",
        action="append",
        help="extra multi-step rows per student with these sampler mid times (repeatable: one set of rows each)",
    )


def save_rows(path: Path, meta: dict[str, object], table: list[Row], pictures: list[tuple[str, torch.Tensor]]) -> None:
    """Rows and picture rows as JSON, so tables sampled on separate machines can be joined by ``--from-rows``."""
    payload = {
        "meta": meta,
        "rows": [list(row) for row in table],
        "pictures": [[name, images.tolist()] for name, images in pictures],
    }
    path.write_text(json.dumps(payload))


def load_rows(paths: list[Path]) -> tuple[list[dict[str, object]], list[Row], list[tuple[str, torch.Tensor]]]:
    metas: list[dict[str, object]] = []
    table: list[Row] = []
    pictures: list[tuple[str, torch.Tensor]] = []
    for path in paths:
        payload = json.loads(path.read_text())
        metas.append(payload["meta"])
        table.extend((n, s, f, m, t) for n, s, f, m, t in payload["rows"])
        pictures.extend((name, torch.tensor(images)) for name, images in payload["pictures"])
    return metas, table, pictures


def render(metas: list[dict[str, object]], table: list[Row]) -> str:
    first = metas[0]
    commands = "; ".join(f"`{m['command']}` ({m['seconds']:.0f} s)" for m in metas)
    wall = (
        "one CPU thread; other jobs shared the machine's cores, so wall times are rough"
        if first["device"] == "cpu"
        else f"on {first['device_name']}, every row sampled alone on the device after training"
    )
    lines = [
        "# Digits: teacher vs distilled students",
        "",
        f"{commands} on {first['machine']}, torch {first['torch']}, {first['date']}.",
        "",
        f"{first['num']} samples per row and seed (classes 0–9 in turn), mean ± std over seeds "
        f"{', '.join(map(str, first['seeds']))}. FD: Fréchet distance of the digit classifier's features against "
        "all 1797 digits (lower is better); accuracy: the classifier agrees with the condition; precision / "
        "recall: k-NN manifolds (k = 3) against as many real digits; diversity: within-class mean pairwise "
        "feature distance relative to the data's (1 = as varied as the data). Wall time: the sampler call "
        f"for all samples of a row, {wall}; `sdpa` attention for every network (the students train with "
        "`math` or `triton_jvp` for the JVP).",
        "",
        f"The feature network is the digit classifier of `benchmarks/train_digit_classifier.py` "
        f"({first['classifier']}): test accuracy {first['classifier_accuracy']:.4f} on the 360 held-out digits "
        "of the seeded split.",
        "",
        "| model | steps | NFE | FD ↓ | accuracy ↑ | precision ↑ | recall ↑ | diversity | wall time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, steps, nfe, per_seed, seconds in table:
        cells = [summary([m[c] for m in per_seed]) for c in COLUMNS]
        wall_cell = summary(seconds) if nfe else "–"
        lines.append(f"| {name} | {steps or '–'} | {nfe or '–'} | {' | '.join(cells)} | {wall_cell} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/digits"))
    parser.add_argument(
        "--methods", nargs="*", default=["scm", "dcm", "dmd", "rcm", "dmd_cfg", "rcm_cfg"], help="run folders in --runs"
    )
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--teacher-guidance", nargs="*", type=float, default=[1.0], help="extra teacher rows")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "digits_table.md")
    parser.add_argument("--grid", type=Path, default=ROOT / "digits_grid.png")
    parser.add_argument("--device", default="cpu", help="where the runs sample (cuda for the wider networks)")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="leave out the data and teacher rows"
    )
    add_alt_mid_times(parser)
    parser.add_argument("--save-rows", type=Path, help="also write the rows as JSON, for --from-rows")
    parser.add_argument(
        "--from-rows", type=Path, nargs="+", help="sample nothing: join these --save-rows files, in order"
    )
    args = parser.parse_args()

    if args.from_rows:
        metas, table, pictures = load_rows(args.from_rows)
    else:
        started = time.time()
        table, pictures = collect(args)
        teacher_recipe = open_checkpoint(args.runs / "teacher", device="cpu").recipe
        classifier = teacher_recipe.body.metrics[0].config.classifier
        with safe_open(classifier, "pt") as f:
            accuracy = json.loads((f.metadata() or {}).get("test_accuracy", "NaN"))
        device = torch.device(args.device)
        metas = [
            {
                "command": "python benchmarks/digits_table.py " + " ".join(sys.argv[1:]),
                "seconds": time.time() - started,
                "machine": platform.processor() or platform.machine(),
                "device": device.type,
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d"),
                "num": args.num,
                "seeds": args.seeds,
                "classifier": str(classifier),
                "classifier_accuracy": accuracy,
            }
        ]
        if args.save_rows:
            save_rows(args.save_rows, metas[0], table, pictures)
    text = render(metas, table)
    args.out.write_text(text)
    labelled_grid(pictures).save(args.grid)
    print(text)
    print(f"wrote {args.out} and {args.grid}")


if __name__ == "__main__":
    main()
