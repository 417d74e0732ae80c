"""``moving_digits``: scikit-learn's digits moving at constant velocity on a canvas, bouncing off its walls.

Each clip (C = 1, T frames, canvas × canvas pixels, in [-1, 1]) shows one digit (or two) drawn from the
digits split, upscaled by nearest neighbour to ``digit_size`` pixels, entering at a uniformly drawn
position with a speed drawn from ``speed`` and one of ``directions`` evenly spaced directions. The digit's
box reflects elastically off the canvas walls. Positions are exact reals; each frame shows the digit at
the nearest whole pixel, so the digit keeps the crisp pixels of the digits dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.digits.digits_dataset import NUM_CLASSES, split_digits, to_model_space
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Batch, Condition, SampleShapes

#: Input size of the digits dataset's images: ``digit_size`` must be a multiple of it.
DIGIT_PIXELS = 8


def slot_suffix(slot: int) -> str:
    """The suffix of digit ``slot``'s condition keys: ``label``, ``label2``, … (``direction`` alike)."""
    return "" if slot == 0 else str(slot + 1)


def _check_speed(instance: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    low, high = value
    if not 0.0 <= low <= high:
        raise ValueError(f"must be [low, high] with 0 <= low <= high (pixels per frame), got {list(value)}")


@attrs.define
class MovingDigitsConfig:
    #: ``all`` digits, or the ``train`` / ``test`` part of the digits dataset's seeded split.
    split: Literal["all", "train", "test"] = "all"
    #: Share of the digit images that goes to the test part of the split (as ``digits``).
    test_fraction: float = attrs.field(default=0.2, validator=schema.in_range(0.0, 1.0, low_open=True, high_open=True))
    #: Seeds the train/test permutation; the same seed splits the images as ``digits`` does.
    split_seed: int = attrs.field(default=0, validator=schema.non_negative)
    #: Height and width of the square canvas, in pixels.
    canvas: int = attrs.field(default=32, validator=schema.positive)
    #: Side of the (upscaled) digit, a multiple of 8 that is at most the canvas.
    digit_size: int = attrs.field(default=16, validator=schema.positive)
    #: Frames T per clip.
    frames: int = attrs.field(default=9, validator=schema.positive)
    #: Speed range [low, high] in pixels per frame, drawn uniformly per digit.
    speed: tuple[float, float] = attrs.field(default=(1.0, 3.0), validator=_check_speed)
    #: Number of evenly spaced directions of motion; direction k points at angle 2πk/directions,
    #: counter-clockwise from "right" as the picture is shown (rows grow downwards).
    directions: int = attrs.field(default=8, validator=schema.in_range(1, 360))
    #: Digits per clip (1 or 2); two digits are overlaid with the brighter pixel winning.
    digits_per_clip: int = attrs.field(default=1, validator=schema.in_range(1, 2))
    #: Condition on the class: ``{"label": LongTensor}`` (``label2`` for the second digit); null label 10.
    labels: bool = True
    #: Also condition on each digit's initial direction, ``direction`` (``direction2``); null ``directions``.
    condition_direction: bool = False
    #: Real clips the metrics compare samples with (``reference``), drawn once from this seed.
    reference_clips: int = attrs.field(default=1000, validator=schema.positive)
    reference_seed: int = attrs.field(default=0, validator=schema.non_negative)

    def __attrs_post_init__(self) -> None:
        if self.digit_size % DIGIT_PIXELS:
            raise ValueError(f"digit_size {self.digit_size} must be a multiple of {DIGIT_PIXELS}")
        if self.digit_size > self.canvas:
            raise ValueError(f"digit_size {self.digit_size} is larger than the canvas {self.canvas}")
        if self.condition_direction and not self.labels:
            raise ValueError("condition_direction needs labels: true (direction tokens come with the label's)")

    def label_vocabulary(self) -> dict[str, int]:
        """Condition key → number of values (the null value is that number), in the order the clip gives them."""
        out: dict[str, int] = {}
        if not self.labels:
            return out
        for k in range(self.digits_per_clip):
            suffix = slot_suffix(k)
            out[f"label{suffix}"] = NUM_CLASSES
            if self.condition_direction:
                out[f"direction{suffix}"] = self.directions
        return out

    def sample_shapes(self) -> SampleShapes:
        """Clips (1, frames, canvas, canvas) and their label conditions (recipe validation checks every
        network's patch and label inputs against them)."""
        vocabulary = self.label_vocabulary()
        return SampleShapes(
            x0=(1, self.frames, self.canvas, self.canvas),
            condition={key: () for key in vocabulary},
            classes=vocabulary,
        )


def bounce(start: Tensor, velocity: Tensor, frames: int, room: int) -> Tensor:
    """Positions (..., frames) of a point starting at ``start`` in [0, room] and reflecting off 0 and room.

    The unfolded path q = start + velocity·t is folded back into [0, room] by the triangle wave of period
    2·room: an elastic bounce, exact at every real time.
    """
    t = torch.arange(frames, dtype=torch.float64, device=start.device)
    q = start[..., None] + velocity[..., None] * t
    if room == 0:
        return torch.zeros_like(q)
    return room - ((q % (2 * room)) - room).abs()


def render_clips(images: Tensor, rows: Tensor, cols: Tensor, canvas: int) -> Tensor:
    """Clips (B, 1, T, canvas, canvas): digit images (B, K, S, S) with top-left corners (B, K, T) (whole pixels).

    Background −1; where digits overlap the brighter pixel shows.
    """
    b, k, s, _ = images.shape
    t = rows.shape[-1]
    pixels = torch.arange(canvas, device=images.device)
    r = pixels.view(1, 1, 1, canvas) - rows[..., None]  # (B, K, T, canvas): row inside the digit
    c = pixels.view(1, 1, 1, canvas) - cols[..., None]
    inside = ((r >= 0) & (r < s))[..., :, None] & ((c >= 0) & (c < s))[..., None, :]
    bi = torch.arange(b, device=images.device).view(b, 1, 1, 1, 1)
    ki = torch.arange(k, device=images.device).view(1, k, 1, 1, 1)
    values = images[bi, ki, r.clamp(0, s - 1)[..., :, None], c.clamp(0, s - 1)[..., None, :]]
    frames = torch.where(inside, values, torch.full_like(values, -1.0)).amax(dim=1)
    return frames.view(b, 1, t, canvas, canvas)


@attrs.frozen
class Motion:
    """What was drawn for a batch of clips, per digit (B, K): which image, where it starts, how it moves."""

    index: Tensor
    start: Tensor  # (B, K, 2) rows, columns of the top-left corner, in [0, canvas − digit_size]
    speed: Tensor
    direction: Tensor

    def velocity(self, directions: int) -> Tensor:
        """(B, K, 2) pixels per frame along rows and columns (rows grow downwards)."""
        angle = self.direction.double() * (2 * math.pi / directions)
        return torch.stack((-torch.sin(angle), torch.cos(angle)), dim=-1) * self.speed[..., None]


class MovingDigits:
    """Clips x0 (B, 1, T, H, W) in [-1, 1] (the Wan latent layout C, T, H, W) of bouncing digits.

    Batches are drawn on the fly from the engine's data generator: for each digit its image (with
    replacement, from the split), start position, speed and direction, in that order. The dataset itself
    keeps no state, so a resumed run (which restores the generator) sees the same clips.
    ``reference(n)`` gives real clips for the metrics; ``tracks`` the exact positions behind them.
    Evaluation conditions cycle through the classes (label i mod 10), then the directions (⌊i/10⌋ mod D).
    """

    num_classes = NUM_CLASSES

    def __init__(self, config: MovingDigitsConfig) -> None:
        self.config = config
        images, labels = split_digits(config.split, config.test_fraction, config.split_seed)
        self.images: Tensor = to_model_space(images, config.digit_size // DIGIT_PIXELS)[:, 0, 0]  # (N, S, S)
        self.image_labels: Tensor = labels
        self.sample_shape: tuple[int, ...] = (1, config.frames, config.canvas, config.canvas)
        self.room = config.canvas - config.digit_size
        self._reference: tuple[Tensor, Condition] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    # -- drawing and rendering --------------------------------------------------------------------
    def draw_motion(self, n: int, generator: torch.Generator, condition: Mapping[str, Tensor] | None = None) -> Motion:
        """``n`` clips' motion. With ``condition`` (the keys of :meth:`conditions`, (n,) each) every digit with
        a label there is an image of that class and moves in its direction where that is given too, so that
        real clips can be scored under the conditions the model rows are sampled with: a table's data row."""
        cfg, k, device = self.config, self.config.digits_per_clip, generator.device
        index = torch.randint(len(self), (n, k), generator=generator, device=device).cpu()
        start = torch.rand((n, k, 2), generator=generator, device=device, dtype=torch.float64).cpu() * self.room
        u = torch.rand((n, k), generator=generator, device=device, dtype=torch.float64).cpu()
        speed = cfg.speed[0] + (cfg.speed[1] - cfg.speed[0]) * u
        direction = torch.randint(cfg.directions, (n, k), generator=generator, device=device).cpu()
        if condition is not None:
            for slot in range(k):
                suffix = slot_suffix(slot)
                if f"label{suffix}" in condition:
                    index[:, slot] = self._images_of(condition[f"label{suffix}"].cpu(), generator)
                if f"direction{suffix}" in condition:
                    direction[:, slot] = condition[f"direction{suffix}"].cpu()
        return Motion(index=index, start=start, speed=speed, direction=direction)

    def _images_of(self, classes: Tensor, generator: torch.Generator) -> Tensor:
        """For each class asked, one image index of that class drawn uniformly from the split."""
        index = torch.empty_like(classes)
        for c in classes.unique().tolist():
            pool = (self.image_labels == c).nonzero().flatten()
            if len(pool) == 0:
                raise ValueError(f"moving_digits: the {self.config.split} split has no image of class {c}")
            where = (classes == c).nonzero().flatten()
            pick = torch.randint(len(pool), (len(where),), generator=generator, device=generator.device).cpu()
            index[where] = pool[pick]
        return index

    def tracks(self, motion: Motion) -> Tensor:
        """Exact top-left corner positions (B, K, 2, T) in pixels, rows then columns."""
        return bounce(motion.start, motion.velocity(self.config.directions), self.config.frames, self.room)

    def render(self, motion: Motion) -> Tensor:
        corner = self.tracks(motion).round().long()
        return render_clips(self.images[motion.index], corner[:, :, 0], corner[:, :, 1], self.config.canvas)

    def motion_condition(self, motion: Motion) -> dict[str, Tensor]:
        """Every label of the clips (classes and initial directions), whether or not they condition."""
        out = {}
        for k in range(self.config.digits_per_clip):
            suffix = slot_suffix(k)
            out[f"label{suffix}"] = self.image_labels[motion.index[:, k]]
            out[f"direction{suffix}"] = motion.direction[:, k]
        return out

    # -- the dataset protocol ---------------------------------------------------------------------
    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        motion = self.draw_motion(batch_size, generator)
        condition, null = self._condition(self.motion_condition(motion))
        device = generator.device
        return Batch(
            x0=self.render(motion).to(device),
            condition={k: v.to(device) for k, v in condition.items()},
            null_condition=None if null is None else {k: v.to(device) for k, v in null.items()},
        )

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        i = torch.arange(n, device=generator.device)
        values: dict[str, Tensor] = {}
        radix = 1
        for key, size in self.config.label_vocabulary().items():
            values[key] = (i // radix) % size
            radix *= size
        return self._condition(values)

    def _condition(self, labels: Mapping[str, Tensor]) -> tuple[Condition, Condition | None]:
        vocabulary = self.config.label_vocabulary()
        if not vocabulary:
            return {}, None
        condition = {key: labels[key].long() for key in vocabulary}
        null = {key: torch.full_like(condition[key], size) for key, size in vocabulary.items()}
        return condition, null

    def reference(self) -> tuple[Tensor, dict[str, Tensor]]:
        """``reference_clips`` real clips (N, 1, T, H, W) and all their labels, the same on every call."""
        if self._reference is None:
            generator = torch.Generator().manual_seed(self.config.reference_seed)
            motion = self.draw_motion(self.config.reference_clips, generator)
            self._reference = (self.render(motion), self.motion_condition(motion))
        return self._reference

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"moving_digits keeps no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        c = self.config
        return (
            f"MovingDigits(split={c.split}, digits={len(self)}, shape={self.sample_shape}, "
            f"per_clip={c.digits_per_clip}, condition={list(c.label_vocabulary())})"
        )


COMPONENT = rr.Component(kind="dataset", name="moving_digits", factory=MovingDigits, config=MovingDigitsConfig)
