"""The moving-digits loop at CI size: tiny teacher → rCM student → `rcm sample` → finite metrics.

The student must beat a randomly initialised network of the same recipe on the video Fréchet distance;
no quality threshold beyond that. Both feature networks are made here: the video classifier trained for a
few seconds, the digit classifier left untrained (the per-frame metrics only need to be finite).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from rcm_plugins.digits.classifier import DigitClassifier, save_classifier
from rcm_plugins.digits.moving_digits_dataset import MovingDigitsConfig
from rcm_plugins.digits.video_classifier import save_video_classifier, train_video_classifier

from rcm_registry.testing import run_cli

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes/moving_digits"
#: Index of each metric in recipes/moving_digits/_base/tiny.yaml and the feature network it reads.
VIDEO_METRICS, FRAME_METRICS = (0, 2, 5, 6), (1, 3)
KEYS = {"video_fd", "frame_fd", "accuracy", "direction_accuracy", "temporal_consistency", "frame_accuracy",
        "motion_error", "motion_error_max", "precision", "recall", "diversity", "diversity_min"}  # fmt: skip


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--set`` overrides pointing the recipe's metrics at feature networks made for this test."""
    folder = tmp_path_factory.mktemp("classifiers")
    torch.set_num_threads(1)
    data = MovingDigitsConfig(canvas=16, digit_size=8, frames=5, speed=(0.5, 2.0))
    video, accuracy = train_video_classifier(data, steps=600, batch_size=32, test_clips=100)
    save_video_classifier(video, folder / "video.safetensors", accuracy)
    torch.manual_seed(0)
    save_classifier(DigitClassifier(), folder / "digit.safetensors", math.nan)
    sets = [f"metrics[{i}].classifier={folder / 'video.safetensors'}" for i in VIDEO_METRICS]
    sets += [f"metrics[{i}].classifier={folder / 'digit.safetensors'}" for i in FRAME_METRICS]
    return [a for s in sets for a in ("--set", s)]


def train(recipe: str, out: Path, *sets: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    result = run_cli("run", str(RECIPES / recipe), "--out", str(out), "--no-progress", *args)
    assert result.code == 0, result.err


def sample_metrics(run: Path, out: Path) -> dict[str, float]:
    result = run_cli("sample", str(run), "--steps", "2", "--num", "200", "--out", str(out))
    assert result.code == 0, result.err
    return {k: float(v) for k, v in re.findall(r"^(\w+): (-?[\d.]+|nan|inf)$", result.out, flags=re.M)}


def test_teacher_student_sample_and_metrics(
    classifiers: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["run.batch_size=16", "run.checkpoint_every=0", "data.reference_clips=200"]
    common += [s for s in classifiers if s != "--set"]
    student_sets = ["run.iterations=24", "phases.student.losses[0].tangent_warmup=6",
                    "phases.student.losses[1].start=6", "phases.critic.start=6"]  # fmt: skip
    train("teacher_tiny.yaml", tmp_path / "teacher", *common, "run.iterations=80", "phases.teacher.lr_warmup=10")
    train(
        "rcm_tiny.yaml",
        tmp_path / "rcm",
        *common,
        *student_sets,
        f"networks.teacher.weights.path={tmp_path / 'teacher'}",
    )
    # The same recipe from a teacher that never trained, its student not moved either: a random network.
    train(
        "teacher_tiny.yaml",
        tmp_path / "random_teacher",
        *common,
        "run.iterations=1",
        "phases.teacher.optimizer.lr=1e-30",
    )
    train("rcm_tiny.yaml", tmp_path / "random", *common, "run.iterations=1", "phases.student.optimizer.lr=1e-30",
          f"networks.teacher.weights.path={tmp_path / 'random_teacher'}")  # fmt: skip

    student = sample_metrics(tmp_path / "rcm", tmp_path / "student.safetensors")
    random = sample_metrics(tmp_path / "random", tmp_path / "random.safetensors")
    assert set(student) >= KEYS
    assert all(math.isfinite(v) for v in student.values()), student
    assert student["video_fd"] < random["video_fd"], (student, random)

    from rcm_registry.engine import plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)  # the strips alone (matplotlib adds a title)
    picture = run_cli("sample", str(tmp_path / "rcm"), "--steps", "1", "--num", "4", "--out", str(tmp_path / "s.png"))
    assert picture.code == 0, picture.err
    from PIL import Image

    with Image.open(tmp_path / "s.png") as image:  # one strip of 5 frames of 16 pixels (1 apart) per clip
        assert image.size == (4 * (5 * 17 - 1), 4 * (4 * 19 - 3))
