"""The header of recipes/wan2.1/t2v_tiny_synth.yaml lists every step of the tiny Wan loop: its command lines,
run as written in a bare folder (the install line aside: the test extra has installed the wan extra's packages),
write the codecs, the teacher and the prompts and end with an MP4 of the distilled student."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/wan2.1/t2v_tiny_synth.yaml"


def header_commands(path: Path) -> list[str]:
    """The command lines of a recipe's header (``#   command``, continued by a trailing backslash)."""
    commands: list[str] = []
    continued = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if continued:
            commands[-1] += " " + text.strip()
        elif text.startswith("   ") and text.strip():
            commands.append(text.strip())
        else:
            continue
        continued = commands[-1].endswith("\\")
        if continued:
            commands[-1] = commands[-1][:-1].rstrip()
    return commands


def test_the_header_names_every_step() -> None:
    steps = header_commands(RECIPE)
    assert re.match(r'pip install -e "\.\[wan\]"', steps[0]), steps[0]
    assert [s.split()[0] for s in steps[1:]] == ["python", "printf", "rcm", "rcm", "rcm"]
    assert "rcm_plugins.data.tiny CODECS --teacher TEACHER" in steps[1] and "> prompts.txt" in steps[2]


@pytest.mark.slow
def test_the_header_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    for command in header_commands(RECIPE)[1:]:
        if command.startswith("python "):
            command = f"{sys.executable} {command[len('python ') :]}"
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "fox.mp4").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "CODECS").iterdir()) == ["text_encoder", "tokenizer", "vae"]


def test_writing_the_tiny_codecs_twice_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`python -m rcm_plugins.data.tiny` reports a user error as one line (no traceback), exit code 2, and
    leaves the folder that was there as it was."""
    (tmp_path / "CODECS").mkdir()
    (tmp_path / "CODECS" / "mine.txt").write_text("keep")
    proc = subprocess.run(
        [sys.executable, "-m", "rcm_plugins.data.tiny", "CODECS"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "CODECS" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "CODECS").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CODECS"]
