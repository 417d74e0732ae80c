"""The digits tables' ``--alt-mid-times``: repeatable, each schedule one more set of multi-step rows per
student, labelled by its times; 1-step rows and step counts the schedule is too short for are left out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _digits_table() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import digits_table
    finally:
        sys.path.remove(str(BENCHMARKS))
    return digits_table


def test_each_schedule_gives_its_own_rows() -> None:
    table = _digits_table()
    parser = argparse.ArgumentParser()
    table.add_alt_mid_times(parser)
    args = parser.parse_args(["--alt-mid-times", "1.5", "1.4", "1.0", "--alt-mid-times", "1.2"])
    assert args.alt_mid_times == [[1.5, 1.4, 1.0], [1.2]]
    calls: list[tuple[str, int, list[float]]] = []

    def measure(run: object, name: str, steps: int, nfe: int, *, mid_times: list[float]) -> None:
        assert steps == nfe
        calls.append((name, steps, mid_times))

    table.alt_schedule_rows(measure, None, "rCM", [1, 2, 4], args.alt_mid_times)
    assert calls == [
        ("rCM, mid times 1.5/1.4/1", 2, [1.5, 1.4, 1.0]),
        ("rCM, mid times 1.5/1.4/1", 4, [1.5, 1.4, 1.0]),
        ("rCM, mid times 1.2", 2, [1.2]),  # one mid time: 2 steps at most
    ]
    calls.clear()
    table.alt_schedule_rows(measure, None, "rCM", [1, 2, 4], parser.parse_args([]).alt_mid_times)
    assert calls == []
