"""One student recipe trained with several seeds: its rows pooled over the training runs, against the teacher.

    python benchmarks/training_seed_spread.py rows-reference.json rows-rcm.json rows-rcm_seeds_seed1.json ...

The first file holds the teacher's rows (``moving_digits_gpu.sh reference``), each next one the rows of one
training run of the same recipe (``moving_digits_table.py --save-rows``; labels ``NAME (N it.)[, schedule]``).
Rows of the runs that share their schedule suffix, iteration count and step count are pooled: for each run
the mean over its sampling seeds, then the mean ± standard deviation of those over the training runs. Beside
each metric the issue's targets read against the teacher's mean: video FD as a ratio (target ≤ 1.2×),
recall as a ratio (≥ 0.95×), temporal consistency as a difference (≥ −0.02). Where the reference file holds
the data row (real clips scored like samples), one more column reads the video FD above that row's: the
Fréchet distance estimated from a few hundred clips is biased upwards, and the data row measures that floor
(real clips against real clips), so the ratio of the two excesses is the student's distance from the data as
a multiple of the teacher's, which the raw ratio understates. Prints a markdown table; `--out` writes it too.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

from digits_table import Row, load_rows, summary

from rcm_registry.atomic import write_text_atomic

#: ``NAME (N it.)`` and an optional ``, schedule`` after it, as moving_digits_table.py labels student rows.
_LABEL = re.compile(r"^(?P<name>.+?) \((?P<iterations>\d+) it\.\)(?P<suffix>.*)$")
METRICS = ("video_fd", "recall", "temporal_consistency")
#: Suffixes of the low-precision rows (``--lowprec``): not the recipe's own samples, so not pooled.
LOWPREC = ("own precision", "int8", "fp8")


def seed_means(row: Row) -> dict[str, float]:
    """A row's metrics, each the mean over its sampling seeds."""
    return {k: statistics.fmean(seed[k] for seed in row[3]) for k in METRICS}


def reference_means(reference: list[Row], prefix: str, *, required: bool = True) -> dict[str, float] | None:
    """The seed means of the reference file's one row whose label starts with ``prefix``."""
    rows = [row for row in reference if str(row[0]).startswith(prefix)]
    if len(rows) == 1:
        return seed_means(rows[0])
    if rows or required:
        raise SystemExit(f"the reference file must hold one {prefix} row, found {len(rows)}")
    return None


def pool(runs: list[list[Row]]) -> dict[tuple[int, str, int], list[dict[str, float]]]:
    """(iterations, schedule suffix, steps) → the per-run metric means, one per training run that has it."""
    pooled: dict[tuple[int, str, int], list[dict[str, float]]] = defaultdict(list)
    for rows in runs:
        for row in rows:
            match = _LABEL.match(str(row[0]))
            if match is None or any(word in match["suffix"] for word in LOWPREC):
                continue  # not a student row, or a low-precision row
            pooled[(int(match["iterations"]), match["suffix"], int(row[1]))].append(seed_means(row))
    return pooled


def render(
    teacher: dict[str, float],
    pooled: dict[tuple[int, str, int], list[dict[str, float]]],
    floor: float | None = None,
) -> str:
    """The pooled table; ``floor``: the data row's video FD, for the column of excesses over it."""
    head = f"Teacher: video FD {teacher['video_fd']:.3f}"
    if floor is not None:
        head += f" ({teacher['video_fd'] - floor:.3f} above the data row's {floor:.3f})"
    lines = [
        f"{head}, recall {teacher['recall']:.3f}, temporal consistency {teacher['temporal_consistency']:.3f}.",
        "",
        "| iterations | schedule | steps | runs | video FD per run | video FD | × teacher | above data, × teacher "
        "| recall | × teacher | temporal consistency | − teacher |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (iterations, suffix, steps), runs in sorted(pooled.items()):
        fd, recall, tc = ([run[k] for run in runs] for k in METRICS)
        schedule = suffix.lstrip(", ") or "sampler default"
        mean_fd = statistics.fmean(fd)
        excess = "–"
        if floor is not None and teacher["video_fd"] > floor:
            excess = f"{(mean_fd - floor) / (teacher['video_fd'] - floor):.3f}"
        lines.append(
            f"| {iterations} | {schedule} | {steps} | {len(runs)} | {' / '.join(f'{v:.2f}' for v in fd)} "
            f"| {summary(fd)} | {mean_fd / teacher['video_fd']:.3f} | {excess} | {summary(recall)} "
            f"| {statistics.fmean(recall) / teacher['recall']:.3f} | {summary(tc)} "
            f"| {statistics.fmean(tc) - teacher['temporal_consistency']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="rows of the data and the teacher")
    parser.add_argument("runs", type=Path, nargs="+", help="rows of each training run")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    reference = load_rows([args.reference])[1]
    teacher = reference_means(reference, "teacher")
    assert teacher is not None
    data = reference_means(reference, "data", required=False)
    pooled = pool([load_rows([path])[1] for path in args.runs])
    if not pooled:
        raise SystemExit("no student rows (labels 'NAME (N it.)') in the run files")
    table = render(teacher, pooled, data["video_fd"] if data else None)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
