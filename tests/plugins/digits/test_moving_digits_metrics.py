"""Moving-digits metrics on constructed clips whose right answers are known, and their errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rcm_plugins.digits.classifier import DigitClassifier, features_and_logits, save_classifier, train_classifier
from rcm_plugins.digits.clip_frames import as_clips, centroids, digit_crops
from rcm_plugins.digits.clip_motion import fit_bounce_tracks, motion_errors
from rcm_plugins.digits.moving_digits_dataset import Motion, bounce
from rcm_plugins.digits.video_classifier import ClipGeometry, VideoClassifier, save_video_classifier

import rcm_registry as rr

pytest.importorskip("sklearn")

TINY = {"canvas": 16, "digit_size": 8, "frames": 5, "condition_direction": True}


@pytest.fixture(scope="module")
def reg() -> rr.Registry:
    return rr.registry()


@pytest.fixture(scope="module")
def dataset(reg: rr.Registry) -> object:
    return reg.build("dataset", "moving_digits", **TINY, reference_clips=300)


@pytest.fixture(scope="module")
def video_classifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained (random) video classifier: FD, precision/recall and diversity plumbing needs no quality."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("video") / "video.safetensors"
    save_video_classifier(VideoClassifier(ClipGeometry(5, 16, 8, 8)), path, {"class_accuracy": math.nan})
    return str(path)


@pytest.fixture(scope="module")
def digit_classifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A digit classifier trained for two epochs: it tells digits apart, which is all the tests need."""
    torch.set_num_threads(1)
    model, _ = train_classifier(epochs=2)
    path = tmp_path_factory.mktemp("digit") / "digit.safetensors"
    save_classifier(model, path, math.nan)
    return str(path)


def clips_of(
    dataset: object, index: list[list[int]], start: list[tuple[float, float]], speed: float, direction: int
) -> torch.Tensor:
    """Clips of the given digit images (one a clip) from the given corners, rendered by the dataset."""
    n = len(index)
    motion = Motion(
        index=torch.tensor(index),
        start=torch.tensor(start, dtype=torch.float64)[:, None, :],
        speed=torch.full((n, 1), speed, dtype=torch.float64),
        direction=torch.full((n, 1), direction),
    )
    return dataset.render(motion)


# -- motion ------------------------------------------------------------------------------------------------
def test_perfect_bouncing_tracks_fit_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    start = torch.rand(500, generator=g, dtype=torch.float64) * 16
    velocity = (torch.rand(500, generator=g, dtype=torch.float64) - 0.5) * 8
    tracks = bounce(start, velocity, 9, 16) + 4.5  # a centroid sits at a fixed offset from the corner
    assert (fit_bounce_tracks(tracks, 16, 6.0) - tracks).abs().max() < 1e-9
    points = torch.stack((tracks[:250], tracks[250:]), dim=-1)  # (250, 9, 2)
    assert motion_errors(points, 16, 6.0).max() < 1e-9


def test_jumping_and_accelerating_tracks_do_not_fit() -> None:
    t = torch.arange(9, dtype=torch.float64)
    accelerating = 0.25 * t**2  # 0 → 16: no constant velocity or bounce explains it
    jumping = torch.tensor([2.0, 14.0, 3.0, 13.0, 2.0, 15.0, 4.0, 12.0, 3.0], dtype=torch.float64)
    tracks = torch.stack((accelerating, jumping))
    residual = (fit_bounce_tracks(tracks, 16, 6.0) - tracks).square().mean(dim=1).sqrt()
    assert residual[0] > 0.3 and residual[1] > 3.0


def test_motion_metric_on_rendered_clips(reg: rr.Registry, dataset: object) -> None:
    metric = reg.build("metric", "moving_digits_motion")
    # Whole-pixel velocities from whole-pixel starts: every frame is exactly on the track.
    exact = clips_of(dataset, [[0], [5], [9]], [(1.0, 0.0), (8.0, 3.0), (4.0, 7.0)], speed=2.0, direction=0)
    assert metric(exact, {}, dataset)["motion_error"] < 1e-9
    diagonal = clips_of(dataset, [[0], [5]], [(0.0, 0.0), (6.0, 2.0)], speed=2 * math.sqrt(2), direction=1)
    assert metric(diagonal, {}, dataset)["motion_error"] < 1e-9
    # Real clips: whole-pixel rounding of real positions only.
    real, _ = dataset.reference()
    assert metric(real, {}, dataset)["motion_error"] < 0.4
    # Frames of different clips shuffled in time: the digit jumps around.
    shuffled = real[:50].clone()
    shuffled[:, :, 1::2] = real[50:100, :, 1::2]
    assert metric(shuffled, {}, dataset)["motion_error"] > 1.0


def test_centroids_and_crops(dataset: object) -> None:
    clips = clips_of(dataset, [[3]], [(1.0, 2.0)], speed=1.0, direction=6)  # downwards, 1 pixel a frame
    track = centroids(as_clips(clips))[0]
    torch.testing.assert_close(track[:, 0].diff(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(track[:, 1].diff(), torch.zeros(4, dtype=torch.float64))
    crops = digit_crops(as_clips(clips), 8)
    for crop in crops:  # the window lands on the digit: its crop is the image
        torch.testing.assert_close(crop[0], dataset.images[3], rtol=0, atol=0)
    blank = torch.full((1, 1, 2, 16, 16), -1.0)
    torch.testing.assert_close(centroids(as_clips(blank))[0], torch.full((2, 2), 7.5, dtype=torch.float64))


def shifted(image: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """``image`` moved by (dr, dc) whole pixels, background (−1) coming in."""
    out = torch.full_like(image, -1.0)
    h, w = image.shape
    source = image[max(-dr, 0) : h - max(dr, 0), max(-dc, 0) : w - max(dc, 0)]
    out[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = source
    return out


def test_upscaled_digit_crops_give_back_the_digit(reg: rr.Registry) -> None:
    big = reg.build("dataset", "moving_digits", reference_clips=20)  # 16x16 digits on 32x32
    x, _ = big.reference()
    crops = digit_crops(as_clips(x), 16).view(20, 9, 8, 8)
    motion = big.draw_motion(20, torch.Generator().manual_seed(big.config.reference_seed))
    originals = big.images[motion.index[:, 0]][:, ::2, ::2]  # the clips' 8x8 digits
    # No half-pixel blur: every frame's crop is the clip's own 8x8 digit, moved by at most a pixel.
    moves = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    for i in range(20):
        for f in range(9):
            assert any(torch.equal(crops[i, f], shifted(originals[i], dr, dc)) for dr, dc in moves), (i, f)


# -- per-frame metrics ---------------------------------------------------------------------------------------
def test_temporal_consistency_and_frame_accuracy(reg: rr.Registry, dataset: object, digit_classifier: str) -> None:
    from rcm_plugins.digits.classifier import load_classifier

    _, logits = features_and_logits(load_classifier(digit_classifier), dataset.images[:, None])
    read = logits.argmax(dim=1)
    a = 0
    b = int((read != read[a]).nonzero()[0])  # an image the classifier reads as another class
    steady = clips_of(dataset, [[a], [b]], [(2.0, 2.0), (6.0, 1.0)], speed=1.5, direction=3)
    switching = steady[:1].clone()
    switching[:, :, 3:] = clips_of(dataset, [[b]], [(2.0, 2.0)], speed=1.5, direction=3)[:, :, 3:]
    metric = reg.build("metric", "moving_digits_temporal_consistency", classifier=digit_classifier)
    out = metric(steady, {"label": read[[a, b]]}, dataset)
    assert out == {"temporal_consistency": 1.0, "frame_accuracy": 1.0}
    out = metric(switching, {"label": read[[a]]}, dataset)
    assert out["temporal_consistency"] == 0.0 and out["frame_accuracy"] == pytest.approx(3 / 5)


def test_frame_fd_is_zero_on_the_reference_and_large_on_noise(
    reg: rr.Registry, dataset: object, digit_classifier: str
) -> None:
    metric = reg.build("metric", "moving_digits_frame_fd", classifier=digit_classifier)
    real, labels = dataset.reference()
    assert abs(metric(real, labels, dataset)["frame_fd"]) < 1e-6
    other = reg.build("dataset", "moving_digits", **TINY, reference_clips=300, reference_seed=1).reference()[0]
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert metric(noise, labels, dataset)["frame_fd"] > 10 * metric(other, labels, dataset)["frame_fd"]


# -- video metrics -------------------------------------------------------------------------------------------
def test_video_fd_precision_recall_and_diversity(reg: rr.Registry, dataset: object, video_classifier: str) -> None:
    real, labels = dataset.reference()
    other, other_labels = reg.build(
        "dataset", "moving_digits", **TINY, reference_clips=300, reference_seed=1
    ).reference()
    build = lambda name, **kw: reg.build("metric", name, classifier=video_classifier, **kw)
    fd = build("moving_digits_video_fd")
    assert abs(fd(real, labels, dataset)["video_fd"]) < 1e-6
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert fd(noise, labels, dataset)["video_fd"] > 10 * fd(other, other_labels, dataset)["video_fd"]
    pr = build("moving_digits_precision_recall")(other, other_labels, dataset)
    assert pr["precision"] > 0.7 and pr["recall"] > 0.7
    collapsed = other[:1].expand_as(other)
    assert build("moving_digits_precision_recall")(collapsed, other_labels, dataset)["recall"] < 0.1
    div = build("moving_digits_diversity")
    assert 0.8 < div(other, other_labels, dataset)["diversity"] < 1.2
    assert div(collapsed, other_labels, dataset)["diversity"] < 1e-4


def test_video_accuracy_against_the_classifiers_own_reading(
    reg: rr.Registry, dataset: object, video_classifier: str
) -> None:
    from rcm_plugins.digits.video_classifier import load_video_classifier, video_features_and_logits

    real, _ = dataset.reference()
    _, classes, directions = video_features_and_logits(load_video_classifier(video_classifier), real, "test")
    label, direction = classes.argmax(1), directions.argmax(1)
    metric = reg.build("metric", "moving_digits_accuracy", classifier=video_classifier)
    assert metric(real, {"label": label, "direction": direction}, dataset) == {
        "accuracy": 1.0,
        "direction_accuracy": 1.0,
    }
    wrong = metric(real, {"label": (label + 1) % 10}, dataset)
    assert wrong == {"accuracy": 0.0}  # no direction in the condition: no direction accuracy


# -- errors ----------------------------------------------------------------------------------------------------
VIDEO_METRICS = ("moving_digits_video_fd", "moving_digits_accuracy", "moving_digits_precision_recall",
                 "moving_digits_diversity")  # fmt: skip


@pytest.mark.parametrize("name", VIDEO_METRICS)
def test_missing_video_classifier_is_a_user_error(reg: rr.Registry, dataset: object, tmp_path: Path, name: str) -> None:
    real, labels = dataset.reference()
    missing = tmp_path / "none.safetensors"
    with pytest.raises(rr.UserError, match=f"{missing}.*train_video_classifier.py"):
        reg.build("metric", name, classifier=str(missing))(real[:10], {"label": labels["label"][:10]}, dataset)


@pytest.mark.parametrize("name", ["moving_digits_frame_fd", "moving_digits_temporal_consistency"])
def test_missing_digit_classifier_is_a_user_error(reg: rr.Registry, dataset: object, tmp_path: Path, name: str) -> None:
    real, labels = dataset.reference()
    missing = tmp_path / "none.safetensors"
    with pytest.raises(rr.UserError, match="train_digit_classifier"):
        reg.build("metric", name, classifier=str(missing))(real[:10], {"label": labels["label"][:10]}, dataset)


def test_clips_of_another_geometry_or_two_digits_are_user_errors(
    reg: rr.Registry, video_classifier: str, tmp_path: Path
) -> None:
    big = reg.build("dataset", "moving_digits", reference_clips=10)
    real, labels = big.reference()
    with pytest.raises(rr.UserError, match="reads clips of 5 frames of 16x16 pixels"):
        reg.build("metric", "moving_digits_video_fd", classifier=video_classifier)(real, labels, big)
    two = reg.build("dataset", "moving_digits", **TINY, digits_per_clip=2, reference_clips=10)
    with pytest.raises(rr.UserError, match="digits_per_clip is 2"):
        reg.build("metric", "moving_digits_motion")(two.reference()[0], {}, two)
    digits = reg.build("dataset", "digits")
    with pytest.raises(rr.UserError, match="moving_digits dataset"):
        reg.build("metric", "moving_digits_motion")(real, {}, digits)
    not_video = tmp_path / "digit.safetensors"
    save_classifier(DigitClassifier(), not_video, math.nan)
    with pytest.raises(rr.UserError, match="not a video classifier"):
        reg.build("metric", "moving_digits_video_fd", classifier=str(not_video))(real, labels, big)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(other), metadata={"geometry": '{"frames": 9, "canvas": 32, '
              '"digit_size": 16, "directions": 8}'})  # fmt: skip
    with pytest.raises(rr.UserError, match=r"not this video classifier's weights.*train them again"):
        reg.build("metric", "moving_digits_video_fd", classifier=str(other))(real, labels, big)
