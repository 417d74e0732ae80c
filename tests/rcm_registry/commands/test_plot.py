"""``rcm plot RUN``: the loss curves of a run's metrics.jsonl as a PNG, and its user errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rcm_registry.engine import plots
from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error, tree

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "recipes/quickstart/teacher.yaml")
SMALL = ["networks.teacher.width=16", "networks.teacher.depth=1", "run.batch_size=32", "run.log_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plot") / "run"
    sets = [arg for value in (*SMALL, "run.iterations=8") for arg in ("--set", value)]
    result = run_cli("run", RECIPE, "--out", str(out), "--no-progress", *sets)
    assert result.code == 0, result.err
    return out


def test_plot_draws_the_logged_losses(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[Any] = []
    render = plots._to_image
    monkeypatch.setattr(plots, "_to_image", lambda fig: drawn.append(fig) or render(fig))
    out = tmp_path / "curves.png"
    result = run_cli("plot", str(run), "--out", str(out))
    assert result.code == 0, result.err
    assert Image.open(out).format == "PNG"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (line,) = [line for line in drawn[0].axes[0].lines if line.get_label() == "loss/flow_matching"]
    assert line.get_xydata().tolist() == [[r["iteration"], r["loss/flow_matching"]] for r in records]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]


def test_plot_writes_into_the_run_by_default(run: Path) -> None:
    result = run_cli("plot", str(run))
    assert result.code == 0, result.err
    assert Image.open(run / "losses.png").size == (800, 700)
    (run / "losses.png").unlink()


def test_plot_without_matplotlib_names_the_extra(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    before = tree(tmp_path)
    result = run_cli("plot", str(run), "--out", str(tmp_path / "x.png"))
    assert_user_error(result, "'.[plot]'", tmp_path, before)


def test_plot_user_errors(run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n{oops\n{"iteration": 2, "loss": 0.5}\n')
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "metrics.jsonl").write_text('{"iteration": 1, "phase": "teacher"}\n{"itera')
    cases = [
        ([str(empty)], f"{empty}: no metrics.jsonl"),
        ([str(broken)], f"{broken}/metrics.jsonl:2: not a JSON line"),
        ([str(cut)], f"{cut}/metrics.jsonl: no losses logged yet"),  # the cut last line is skipped, not an error
        ([str(run), "--out", str(tmp_path / "x.jpg")], "must end in .png"),
        ([str(run), "--out", str(tmp_path / "no/x.png")], f"folder {tmp_path}/no does not exist"),
    ]
    for args, named in cases:
        before = tree(tmp_path)
        assert_user_error(run_cli("plot", *args), named, tmp_path, before)
