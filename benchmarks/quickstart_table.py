"""The quickstart table: the 50-step CFG teacher against sCM, dCM, DMD and rCM students at 1, 2 and 4 steps.

    python benchmarks/quickstart_table.py [--runs runs/quickstart_table] [--seeds 0 1 2] [--reuse]

For every seed S it trains the quickstart teacher (``recipes/quickstart/teacher.yaml --set run.seed=S``)
and then each student recipe from that teacher (``--set run.seed=S --set networks.teacher.weights.path=...``),
at most ``--jobs`` trainings at a time, each through ``rcm run`` in a subprocess (its log goes to
``<run>/train.log``). ``--reuse`` keeps runs that already hold their final checkpoint instead of refusing
to overwrite them. Then every run is sampled with its EMA weights: the teacher with its recipe's sampler
(Euler, 50 steps, CFG), the students with ``trigflow_multistep`` at 1, 2 and 4 steps, ``--num`` samples
with sampling seed S. The table gives mean ± standard deviation over the seeds of the recipes' metrics,
the NFE (network evaluations per sample; CFG counts twice) and the sampler's wall time (median of
``--repeats`` calls, on this machine, with the recipe's thread count). Writes
``benchmarks/quickstart_table.md`` and ``benchmarks/quickstart_grid.png`` (rows: models, columns: steps;
the first seed's samples).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.engine.pictures import scatter_png
from rcm_registry.engine.sampling import LoadedRun, SampleResult, draw, open_checkpoint

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RECIPES = REPO / "recipes" / "quickstart"
NAMES = {"scm": "sCM", "dcm": "dCM", "dmd": "DMD", "rcm": "rCM"}
#: (metric key, column title, decimals)
METRICS = (
    ("mode_coverage", "mode coverage", 3),
    ("high_quality_rate", "high-quality rate", 3),
    ("class_accuracy", "class accuracy", 3),
    ("sliced_wasserstein", "sliced Wasserstein", 4),
)
#: Half-width of every grid panel, in data units: the grid's outer modes sit at ±1.41 (std 0.07), so
#: a shared extent keeps panels comparable and shows samples thrown off the grid.
PANEL_EXTENT = 2.0
PANEL_SIZE = 300


@dataclass
class Job:
    """One training: ``rcm run recipe --out out --set ...``, started once ``after`` has finished."""

    label: str
    recipe: Path
    out: Path
    overrides: list[str]
    after: Path | None = None
    seconds: float | None = None


@dataclass
class Row:
    """One table row: a model at a number of steps, its per-seed metrics and sampling times."""

    model: str
    steps: int
    nfe: int
    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint at its recipe's last iteration."""
    path = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if path is None:
        return False
    ckpt = Checkpoint(path)
    return ckpt.iteration >= int(ckpt.recipe()["run"]["iterations"])


def plan(runs: Path, methods: list[str], seeds: list[int], extra: list[str]) -> list[Job]:
    jobs: list[Job] = []
    for seed in seeds:
        teacher = runs / f"teacher_s{seed}"
        jobs.append(Job(f"teacher seed {seed}", RECIPES / "teacher.yaml", teacher, [f"run.seed={seed}", *extra]))
    # Students after all teachers, seed-major, so that each seed's students can start as soon as its
    # teacher is done while the two training slots stay busy.
    for seed in seeds:
        teacher = runs / f"teacher_s{seed}"
        for method in methods:
            overrides = [f"run.seed={seed}", f"networks.teacher.weights.path={teacher}", *extra]
            out = runs / f"{method}_s{seed}"
            jobs.append(Job(f"{NAMES[method]} seed {seed}", RECIPES / f"{method}.yaml", out, overrides, teacher))
    return jobs


def train_all(jobs: list[Job], *, reuse: bool, slots: int) -> None:
    """Run the jobs that are not finished yet, at most ``slots`` at once, honouring ``after``."""
    done: set[Path] = set()
    todo: list[Job] = []
    for job in jobs:
        if reuse and is_finished(job.out):
            print(f"reusing {job.out}", flush=True)
            recorded = job.out / "train_seconds.txt"
            if recorded.is_file():
                job.seconds = float(recorded.read_text(encoding="utf-8"))
            done.add(job.out)
        else:
            todo.append(job)
    clashes = [str(job.out) for job in todo if job.out.exists()]
    if clashes:
        raise SystemExit(
            "these run directories exist (pass --reuse to keep finished ones, or delete them): " + ", ".join(clashes)
        )
    total = len(todo)
    running: dict[Path, tuple[Job, subprocess.Popen[bytes], float]] = {}
    started = 0
    while todo or running:
        for out, (job, proc, t0) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[out]
            if code != 0:
                for _, other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"training {job.label} failed (exit {code}); see {job.out / 'train.log'}")
            job.seconds = time.perf_counter() - t0
            # Kept with the run so that a table made with --reuse still shows how long it took.
            (job.out / "train_seconds.txt").write_text(f"{job.seconds:.1f}\n", encoding="utf-8")
            done.add(out)
            print(f"  done {job.label} in {job.seconds:.0f} s", flush=True)
        ready = [job for job in todo if job.after is None or job.after in done]
        while ready and len(running) < slots:
            job = ready.pop(0)
            todo.remove(job)
            started += 1
            job.out.mkdir(parents=True)
            cmd = [sys.executable, "-m", "rcm_registry.cli", "run", str(job.recipe), "--out", str(job.out)]
            cmd += [arg for o in job.overrides for arg in ("--set", o)]
            cmd.append("--no-progress")
            log = (job.out / "train.log").open("wb")
            print(f"[{started}/{total}] training {job.label} -> {job.out}", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            log.close()  # the child holds its own descriptor
            running[job.out] = (job, proc, time.perf_counter())
        if running:
            time.sleep(0.5)


def sample(run: LoadedRun, num: int, steps: int, seed: int, repeats: int) -> tuple[SampleResult, float]:
    """The first call's samples and metrics, and the median sampler time over ``repeats`` calls."""
    first = draw(run, num, steps=steps, seed=seed)
    times = [first.seconds] + [draw(run, num, steps=steps, seed=seed).seconds for _ in range(repeats - 1)]
    return first, statistics.median(times)


def teacher_nfe(run: LoadedRun, steps: int) -> int:
    guidance = getattr(run.recipe.body.sample.config, "guidance", 1.0)
    return steps * (2 if guidance != 1.0 else 1)


def summary(values: list[float], decimals: int) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{decimals}f} ± {spread:.{decimals}f}"


def panel(result: SampleResult, run: LoadedRun, title: str) -> Image.Image:
    labels = result.condition.get("label")
    return scatter_png(
        result.samples,
        labels,
        size=PANEL_SIZE,
        extent=PANEL_EXTENT,
        centers=getattr(run.dataset, "centers", None),
        title=title,
    )


def tile(cells: dict[tuple[str, int], Image.Image], models: list[str], steps: list[int]) -> Image.Image:
    """Rows = models, columns = steps; a model without a panel at some step leaves that cell blank."""
    margin_left, margin_top, gap = 70, 24, 4
    width = margin_left + len(steps) * (PANEL_SIZE + gap)
    height = margin_top + len(models) * (PANEL_SIZE + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    for j, s in enumerate(steps):
        pen.text((margin_left + j * (PANEL_SIZE + gap) + PANEL_SIZE // 2 - 20, 6), f"{s} step{'s' * (s > 1)}", fill=0)
    for i, model in enumerate(models):
        y = margin_top + i * (PANEL_SIZE + gap)
        pen.text((6, y + PANEL_SIZE // 2 - 6), model, fill=0)
        for j, s in enumerate(steps):
            img = cells.get((model, s))
            if img is not None:
                canvas.paste(img, (margin_left + j * (PANEL_SIZE + gap), y))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quickstart_table")
    parser.add_argument("--methods", nargs="+", default=list(NAMES), choices=list(NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="sampler calls per row and seed for the timing")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--reuse", action="store_true", help="keep runs that already hold their final checkpoint")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="override for every training"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "quickstart_table.md")
    parser.add_argument("--grid", type=Path, default=ROOT / "quickstart_grid.png")
    args = parser.parse_args()

    runs = args.runs.resolve()
    jobs = plan(runs, args.methods, args.seeds, args.extra)
    t_start = time.perf_counter()
    train_all(jobs, reuse=args.reuse, slots=args.jobs)
    print(f"training finished in {time.perf_counter() - t_start:.0f} s", flush=True)
    train_times = {job.out: job.seconds for job in jobs}

    models = ["teacher", *(NAMES[m] for m in args.methods)]
    rows: dict[tuple[str, int], Row] = {}
    cells: dict[tuple[str, int], Image.Image] = {}
    for seed in args.seeds:
        plan_seed: list[tuple[str, Path, list[int]]] = [("teacher", runs / f"teacher_s{seed}", [args.teacher_steps])]
        plan_seed += [(NAMES[m], runs / f"{m}_s{seed}", args.steps) for m in args.methods]
        for model, run_dir, step_list in plan_seed:
            run = open_checkpoint(run_dir)
            for steps in step_list:
                result, seconds = sample(run, args.num, steps, seed, args.repeats)
                nfe = teacher_nfe(run, steps) if model == "teacher" else steps
                row = rows.setdefault((model, steps), Row(model, steps, nfe))
                for key, _, _ in METRICS:
                    row.metrics.setdefault(key, []).append(result.metrics[key])
                row.seconds.append(seconds)
                if train_times.get(run_dir) is not None:
                    row.train_seconds.append(float(train_times[run_dir]))
                if seed == args.seeds[0]:
                    # The teacher's picture goes in the first column; its row has no other panels.
                    column = args.steps[0] if model == "teacher" else steps
                    title = f"{model}, {steps} step{'s' * (steps > 1)}" + (" + CFG" if nfe > steps else "")
                    cells[(model, column)] = panel(result, run, title)
                shown = ", ".join(f"{k} {result.metrics[k]:.3f}" for k, _, _ in METRICS)
                print(f"seed {seed} {model:>7} {steps:>2} steps: {shown}, {seconds * 1e3:.1f} ms", flush=True)

    write_table(args, rows, runs)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    tile(cells, models, args.steps).save(args.grid)
    print(f"wrote {args.out} and {args.grid}")


def write_table(args: argparse.Namespace, rows: dict[tuple[str, int], Row], runs: Path) -> None:
    seeds = " ".join(str(s) for s in args.seeds)
    command = f"python benchmarks/quickstart_table.py --seeds {seeds} --num {args.num}"
    command += "".join(f" --set {o}" for o in args.extra)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    head = [f"{name} | " for _, name, _ in METRICS]
    lines = [
        "# Quickstart distillation table",
        "",
        f"`{command}`",
        "",
        f"Commit {commit.stdout.strip() or 'unknown'}, torch {torch.__version__}, {platform.machine()} CPU "
        f"({os.cpu_count()} cores), {len(args.seeds)} seeds ({seeds}): for each seed the teacher and every student are "
        f"trained with `--set run.seed=S` (each student from that seed's teacher) and sampled with seed S, "
        f"{args.num} samples per row. Values are mean ± standard deviation over the seeds.",
        "",
        "NFE counts network evaluations per sample (the teacher's CFG doubles them). Sampling time is the "
        f"sampler call for all {args.num} samples (median of {args.repeats} calls, 1 CPU thread as the recipes "
        "set); training time is the wall time of `rcm run`, two trainings sharing the machine at once, so "
        "both depend on the load and are only comparable within one table.",
        "",
        "| model | steps | NFE | " + "".join(head) + "sampling (ms) | training (s) |",
        "|---|---:|---:|" + "---:|" * len(METRICS) + "---:|---:|",
    ]
    for row in rows.values():
        values = [summary(row.metrics[key], dec) for key, _, dec in METRICS]
        ms = summary([s * 1e3 for s in row.seconds], 1)
        train = summary(row.train_seconds, 0) if row.train_seconds else "–"
        lines.append(f"| {row.model} | {row.steps} | {row.nfe} | " + " | ".join(values) + f" | {ms} | {train} |")
    lines += [
        "",
        "Metrics (recipes' `metrics:`): mode coverage = share of the 25 modes holding at least 10% of their "
        "fair share of samples within 3 std; high-quality rate = share of samples within 3 std of some mode "
        "(0.989 for exact samples); class accuracy = share within 3 std of a mode of the sample's own class; "
        "sliced Wasserstein = distance to fresh data samples (lower is better).",
        "",
        f"Picture: `{args.grid.name}` (seed {args.seeds[0]}; rows = models, columns = steps).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
