"""``moving_digits``: shapes and range, bounce physics, conditions, determinism, resume, recipe checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rcm_plugins.digits.moving_digits_dataset import bounce

import rcm_registry as rr
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[3]
TINY = {"canvas": 16, "digit_size": 8, "frames": 5}


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def test_clip_shapes_range_and_conditions(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "moving_digits", condition_direction=True)
    assert ds.sample_shape == (1, 9, 32, 32)
    batch = ds.next_batch(16, torch.Generator().manual_seed(0))
    assert batch.x0.shape == (16, 1, 9, 32, 32) and batch.x0.dtype == torch.float32
    assert batch.x0.min() == -1.0 and batch.x0.max() == 1.0
    assert set(batch.condition) == {"label", "direction"}
    assert (batch.null_condition["label"] == 10).all() and (batch.null_condition["direction"] == 8).all()
    # Each frame holds the digit's whole image, unchanged: its pixels sum to the image's.
    motion = ds.draw_motion(16, torch.Generator().manual_seed(1))
    clips = ds.render(motion)
    ink = (clips + 1).sum(dim=(-2, -1))[:, 0]  # (B, T)
    torch.testing.assert_close(ink, (ds.images[motion.index[:, 0]] + 1).sum(dim=(-2, -1))[:, None].expand_as(ink))
    assert ds.motion_condition(motion)["label"].tolist() == ds.image_labels[motion.index[:, 0]].tolist()


def test_bounce_is_an_elastic_reflection() -> None:
    # From 3 at +2 per frame in a room of 10: 3, 5, 7, 9, then reflected 9 → 11 → 9, 7, ..., back off 0.
    track = bounce(torch.tensor([3.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64), 12, 10)
    assert track[0].tolist() == [3, 5, 7, 9, 9, 7, 5, 3, 1, 1, 3, 5]
    # Where the unfolded path is inside the room the track is that path; everywhere it stays in the room and
    # moves at the constant speed between bounces.
    g = torch.Generator().manual_seed(0)
    start = torch.rand(200, generator=g, dtype=torch.float64) * 16
    velocity = (torch.rand(200, generator=g, dtype=torch.float64) - 0.5) * 6
    tracks = bounce(start, velocity, 30, 16)
    unfolded = start[:, None] + velocity[:, None] * torch.arange(30, dtype=torch.float64)
    inside = (unfolded >= 0) & (unfolded <= 16)
    torch.testing.assert_close(tracks[inside], unfolded[inside])
    assert tracks.min() >= 0 and tracks.max() <= 16
    assert (tracks.diff(dim=1).abs() <= velocity.abs()[:, None] + 1e-12).all()
    # Four walls in two dimensions: a bounce off one leaves the other coordinate's motion alone.
    start_2d = torch.tensor([[3.0, 5.0]], dtype=torch.float64)
    both = bounce(start_2d, torch.tensor([[2.0, -1.0]], dtype=torch.float64), 12, 10)
    assert both[0, 0].tolist() == track[0].tolist() and both[0, 1].tolist() == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6]


def test_rendered_digits_follow_their_tracks(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "moving_digits", **TINY, speed=[1.0, 2.0])
    motion = ds.draw_motion(8, torch.Generator().manual_seed(2))
    clips = ds.render(motion)[:, 0]
    corners = ds.tracks(motion).round().long()  # (B, 1, 2, T)
    for b in range(8):
        image = ds.images[motion.index[b, 0]]
        for t in range(TINY["frames"]):
            r, c = corners[b, 0, :, t].tolist()
            torch.testing.assert_close(clips[b, t, r : r + 8, c : c + 8], image, rtol=0, atol=0)
    speed = ds.tracks(motion).diff(dim=-1).square().sum(dim=2).sqrt()  # (B, 1, T−1), away from walls
    assert speed.max() <= 2.0 + 1e-9


def test_batches_are_seeded_and_conditions_balanced(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "moving_digits", **TINY, condition_direction=True)
    a = ds.next_batch(32, torch.Generator().manual_seed(3))
    b = ds.next_batch(32, torch.Generator().manual_seed(3))
    assert torch.equal(a.x0, b.x0) and all(torch.equal(a.condition[k], b.condition[k]) for k in a.condition)
    c = ds.next_batch(32, torch.Generator().manual_seed(4))
    assert not torch.equal(a.x0, c.x0)
    cond, null = ds.conditions(160, torch.Generator())
    assert cond["label"].tolist() == [i % 10 for i in range(160)]
    assert cond["direction"].tolist() == [(i // 10) % 8 for i in range(160)]
    assert (null["label"] == 10).all() and (null["direction"] == 8).all()
    x, labels = ds.reference()
    again, _ = registry.build("dataset", "moving_digits", **TINY).reference()
    assert x.shape == (1000, 1, 5, 16, 16) and torch.equal(x, again) and set(labels) == {"label", "direction"}


def test_generator_state_round_trip_gives_the_same_batches(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "moving_digits", **TINY)
    g = torch.Generator().manual_seed(5)
    ds.next_batch(8, g)
    saved, state = g.get_state(), ds.state_dict()
    want = ds.next_batch(8, g)
    fresh = registry.build("dataset", "moving_digits", **TINY)
    fresh.load_state_dict(state)
    g2 = torch.Generator()
    g2.set_state(saved)
    assert torch.equal(fresh.next_batch(8, g2).x0, want.x0)
    with pytest.raises(ValueError, match="keeps no state"):
        fresh.load_state_dict({"position": 3})


def test_two_digits_unlabelled_and_split(registry: rr.Registry) -> None:
    two = registry.build("dataset", "moving_digits", **TINY, digits_per_clip=2, condition_direction=True)
    batch = two.next_batch(4, torch.Generator().manual_seed(0))
    assert set(batch.condition) == {"label", "direction", "label2", "direction2"}
    plain = registry.build("dataset", "moving_digits", **TINY, labels=False)
    batch = plain.next_batch(4, torch.Generator().manual_seed(0))
    assert batch.condition == {} and batch.null_condition is None
    train = registry.build("dataset", "moving_digits", split="train")
    test = registry.build("dataset", "moving_digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"digit_size": 12}, "multiple of 8"),
        ({"digit_size": 40}, "larger than the canvas"),
        ({"speed": [2.0, 1.0]}, "low <= high"),
        ({"digits_per_clip": 3}, "digits_per_clip"),
        ({"labels": False, "condition_direction": True}, "needs labels"),
    ],
)
def test_bad_configs_are_recipe_errors(registry: rr.Registry, fields: dict[str, object], message: str) -> None:
    with pytest.raises(rr.RecipeError, match=message):
        registry.config("dataset", "moving_digits", **fields)


def test_recipe_check_names_patch_and_label_mismatches() -> None:
    recipe = ROOT / "recipes/moving_digits/teacher_tiny.yaml"
    overrides = ["data.frames=6", "networks.teacher.patch_size=[4,4,4]", "data.condition_direction=false"]
    with pytest.raises(rr.RecipeError) as err:
        validate_recipe(load_recipe(recipe, overrides), rr.registry(), str(recipe))
    text = str(err.value)
    assert "networks.teacher (wan2.1-labels): data (moving_digits) gives samples with T = 6" in text
    assert "not a multiple of 4 (the network's patch size along T)" in text
    assert "the network needs condition 'direction'" in text


def test_resumed_teacher_run_is_bitwise_equal(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rcm_registry.testing import run_cli

    recipe = str(ROOT / "recipes/moving_digits/teacher_tiny.yaml")
    small = ["--set", "run.batch_size=8", "--set", "run.checkpoint_every=2", "--no-progress",
             "--set", "phases.teacher.lr_decay=constant", "--set", "phases.teacher.lr_warmup=0"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli("run", recipe, "--out", str(whole), "--set", "run.iterations=4", *small).code == 0
    assert run_cli("run", recipe, "--out", str(part), "--set", "run.iterations=2", *small).code == 0
    resumed = run_cli("run", recipe, "--out", str(part), "--set", "run.iterations=4", "--resume", *small)
    assert resumed.code == 0, resumed.err
    last = {run: sorted((run / "checkpoints").glob("iter_*"))[-1] for run in (whole, part)}
    assert last[whole].name == last[part].name
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(last[whole] / name)), load_file(str(last[part] / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_motion_drawn_for_conditions_has_them_and_is_seeded(registry: rr.Registry) -> None:
    data = registry.build("dataset", "moving_digits", frames=5, canvas=24, digit_size=8, condition_direction=True)
    condition, _ = data.conditions(40, torch.Generator())
    motion = data.draw_motion(40, torch.Generator().manual_seed(3), condition=condition)
    labels = data.motion_condition(motion)
    assert torch.equal(labels["label"], condition["label"]) and torch.equal(labels["direction"], condition["direction"])
    again = data.draw_motion(40, torch.Generator().manual_seed(3), condition=condition)
    assert torch.equal(again.index, motion.index) and torch.equal(again.start, motion.start)
    # Without a condition the draw is as it always was: the same starts from the same seed, random classes.
    plain = data.draw_motion(40, torch.Generator().manual_seed(3))
    assert torch.equal(plain.start, motion.start) and not torch.equal(plain.index, motion.index)
