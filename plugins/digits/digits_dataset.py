"""``digits``: scikit-learn's 8×8 handwritten digits as one-frame images with a class label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Batch, Condition, SampleShapes

NUM_CLASSES = 10
#: Pixel values in the scikit-learn copy are integers 0..16.
MAX_PIXEL = 16.0


@attrs.define
class DigitsConfig:
    #: ``all`` (1797 images), or the ``train`` / ``test`` part of a seeded split.
    split: Literal["all", "train", "test"] = "all"
    #: Share of the images that goes to the test part of the split.
    test_fraction: float = attrs.field(default=0.2, validator=schema.in_range(0.0, 1.0, low_open=True, high_open=True))
    #: Seeds the train/test permutation (the same seed gives the same split everywhere).
    split_seed: int = attrs.field(default=0, validator=schema.non_negative)
    #: Nearest-neighbour upsampling factor (1: 8×8; 2: 16×16). 8×8 already divides the Wan patch (1, 2, 2).
    upsample: int = attrs.field(default=1, validator=schema.in_range(1, 8))
    #: Condition on the class: ``{"label": LongTensor}``; the null label (for CFG) is 10.
    labels: bool = True

    def sample_shapes(self) -> SampleShapes:
        """(1, 1, 8·upsample, 8·upsample) grey images; with labels, ``label`` of 10 classes."""
        side = 8 * self.upsample
        if not self.labels:
            return SampleShapes(x0=(1, 1, side, side))
        return SampleShapes(x0=(1, 1, side, side), condition={"label": ()}, classes={"label": NUM_CLASSES})


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1797 images as float32 (N, 8, 8) in [0, 16] and their labels (N,) long."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is a test extra, not a core dependency
        raise rr.UserError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    return torch.as_tensor(data.images, dtype=torch.float32), torch.as_tensor(data.target, dtype=torch.long)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, test) indices of a seeded permutation; the test part has round(n·test_fraction) images."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    return order[n_test:].sort().values, order[:n_test].sort().values


def split_digits(split: str, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """The digit images and labels of ``split`` (``all``, ``train`` or ``test``, by :func:`split_indices`)."""
    images, labels = load_digits_tensors()
    if split == "all":
        return images, labels
    train, test = split_indices(images.shape[0], test_fraction, seed)
    keep = train if split == "train" else test
    return images[keep], labels[keep]


def to_model_space(images: Tensor, upsample: int = 1) -> Tensor:
    """(N, 8, 8) pixels in [0, 16] → (N, 1, 1, 8·upsample, 8·upsample) in [-1, 1] (C = 1, T = 1)."""
    x = images / (MAX_PIXEL / 2) - 1.0
    if upsample > 1:
        x = x.repeat_interleave(upsample, dim=-2).repeat_interleave(upsample, dim=-1)
    return x[:, None, None]


class Digits:
    """8×8 grey digits (C = 1, T = 1) scaled to [-1, 1], conditioned on the class label.

    ``x`` (N, 1, 1, H, W) float32 and ``y`` (N,) long hold the chosen split; metrics read them as the
    reference set. Stateless: each batch draws indices with replacement from the engine's generator.
    Evaluation conditions cycle through the classes (label i mod 10), so every class is asked for
    ⌊n/10⌋ or ⌈n/10⌉ times.
    """

    num_classes = NUM_CLASSES

    def __init__(self, config: DigitsConfig) -> None:
        self.config = config
        images, labels = split_digits(config.split, config.test_fraction, config.split_seed)
        self.x: Tensor = to_model_space(images, config.upsample)
        self.y: Tensor = labels
        self.sample_shape: tuple[int, ...] = tuple(self.x.shape[1:])
        self.labels = config.labels

    def __len__(self) -> int:
        return self.x.shape[0]

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        index = torch.randint(len(self), (batch_size,), generator=generator, device=device).cpu()
        condition, null = self._condition(self.y[index].to(device))
        return Batch(x0=self.x[index].to(device), condition=condition, null_condition=null)

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        return self._condition(torch.arange(n, device=generator.device) % NUM_CLASSES)

    def _condition(self, label: Tensor) -> tuple[Condition, Condition | None]:
        if not self.labels:
            return {}, None
        return {"label": label.long()}, {"label": torch.full_like(label.long(), NUM_CLASSES)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"digits keeps no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"Digits(split={self.config.split}, n={len(self)}, shape={self.sample_shape}, labels={self.labels})"


COMPONENT = rr.Component(kind="dataset", name="digits", factory=Digits, config=DigitsConfig)
