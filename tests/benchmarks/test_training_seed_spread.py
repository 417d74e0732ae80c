"""benchmarks/training_seed_spread.py pools one recipe's rows over training runs and reads them against the
teacher: the arithmetic on made-up rows files of moving_digits_table.py's format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "training_seed_spread.py"


def metrics(fd: float, recall: float, tc: float) -> dict[str, float]:
    return {"video_fd": fd, "recall": recall, "temporal_consistency": tc, "precision": 0.9}


def rows_file(path: Path, rows: list[list[Any]]) -> Path:
    path.write_text(json.dumps({"meta": {}, "rows": rows, "pictures": []}))
    return path


def run(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)


def test_rows_are_pooled_over_runs_and_read_against_the_teacher(tmp_path: Path) -> None:
    reference = rows_file(tmp_path / "ref.json", [
        ["data (real clips)", None, None, [metrics(5, 1, 1)], []],
        ["teacher (Euler, CFG 2)", 50, 100, [metrics(7, 0.9, 0.9), metrics(9, 1.0, 1.0)], []],  # 8 / 0.95 / 0.95
    ])  # fmt: skip
    runs = []
    for i, (fd, tc) in enumerate([(8.0, 0.93), (10.0, 0.91)]):
        rows = [
            ["rCM (2000 it.)", 4, 4, [metrics(fd, 0.9, tc), metrics(fd + 2, 0.92, tc)], []],
            ["rCM (2000 it.), mid times 1.5/1.4/1", 4, 4, [metrics(20, 0.5, 0.5)], []],
            ["rCM (2000 it.), int8 attention", 4, 4, [metrics(99, 0.1, 0.1)], []],
        ]
        runs.append(rows_file(tmp_path / f"run{i}.json", rows))
    proc = run(reference, *runs)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(" | ")[1]: line for line in proc.stdout.splitlines() if line.startswith("| 2000")}
    assert set(lines) == {"sampler default", "mid times 1.5/1.4/1"}, "the low-precision row is not pooled"
    cells = [c.strip() for c in lines["sampler default"].strip("|").split("|")]
    # Runs' means over sampling seeds: video FD 9 and 11 → 10 ± 1.414, 1.25× the teacher's 8, and 5 above the
    # data row's 5 against the teacher's 3 (1.667×); recall 0.91 both, 0.958×; temporal consistency 0.93 and
    # 0.91 → 0.92, 0.03 below the teacher's 0.95.
    assert cells[3:] == ["2", "9.00 / 11.00", "10.000 ± 1.414", "1.250", "1.667", "0.910 ± 0.000", "0.958",
                         "0.920 ± 0.014", "-0.030"]  # fmt: skip
    assert "(3.000 above the data row's 5.000)" in proc.stdout


def test_without_a_data_row_the_excess_column_is_empty(tmp_path: Path) -> None:
    reference = rows_file(tmp_path / "ref.json", [["teacher (Euler, CFG 2)", 50, 100, [metrics(8, 1, 1)], []]])
    run_file = rows_file(tmp_path / "run.json", [["rCM (10 it.)", 4, 4, [metrics(12, 1, 1)], []]])
    proc = run(reference, run_file)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 10 "))
    assert [c.strip() for c in row.strip("|").split("|")][6:8] == ["1.500", "–"]


def test_a_reference_without_one_teacher_row_is_refused(tmp_path: Path) -> None:
    reference = rows_file(tmp_path / "ref.json", [["data (real clips)", None, None, [metrics(5, 1, 1)], []]])
    run_file = rows_file(tmp_path / "run.json", [["rCM (10 it.)", 1, 1, [metrics(1, 1, 1)], []]])
    proc = run(reference, run_file)
    assert proc.returncode != 0 and "one teacher row" in proc.stderr


@pytest.mark.parametrize("label", ["teacher (Euler, CFG 2)", "rCM without an iteration count"])
def test_run_files_without_student_rows_are_refused(tmp_path: Path, label: str) -> None:
    reference = rows_file(tmp_path / "ref.json", [["teacher (Euler, CFG 2)", 50, 100, [metrics(8, 1, 1)], []]])
    run_file = rows_file(tmp_path / "run.json", [[label, 50, 100, [metrics(8, 1, 1)], []]])
    proc = run(reference, run_file)
    assert proc.returncode != 0 and "no student rows" in proc.stderr
