"""A small 3-D convolutional classifier of moving-digit clips: the feature space of the video metrics.

It plays for clips the part the digit classifier plays for images (and I3D plays for FVD): trained once,
seeded, on clips of the train digits of the split, it reads a clip's class and the digit's initial
direction; its penultimate features are where the video Fréchet distance, precision/recall and diversity
are taken. It is trained for one clip geometry (frames, canvas, digit size) and refuses others.
``python benchmarks/train_video_classifier.py`` writes the weights the metrics load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from rcm_plugins.digits.digits_dataset import NUM_CLASSES
from rcm_plugins.digits.moving_digits_dataset import DIGIT_PIXELS, MovingDigits, MovingDigitsConfig
from torch import Tensor, nn

import rcm_registry as rr

#: Where the training script writes the weights and the video metrics look for them by default.
DEFAULT_VIDEO_PATH = "runs/moving_digits/video_classifier.safetensors"
SCRIPT = "python benchmarks/train_video_classifier.py"


@attrs.frozen
class ClipGeometry:
    """The clips a classifier was trained on: it reads only these."""

    frames: int
    canvas: int
    digit_size: int
    directions: int

    @classmethod
    def of(cls, config: MovingDigitsConfig) -> ClipGeometry:
        return cls(config.frames, config.canvas, config.digit_size, config.directions)

    def options(self) -> str:
        return (
            f"--frames {self.frames} --canvas {self.canvas} --digit-size {self.digit_size} "
            f"--directions {self.directions}"
        )


class VideoClassifier(nn.Module):
    """Three 3×3×3 convolutions with batch norm (2× spatial max-pool after the first two), the spatial mean of
    each channel, ``width`` features.

    Input (N, 1, T, H, W) in [-1, 1], average-pooled first by digit_size / 8, so that in every geometry the
    digits reach the convolutions at the 8x8 of the digits dataset. The spatial mean (not a max) keeps how
    much of the canvas responds: with a max, clips of pure noise, full of stroke-like bits, came out closer
    to the data than dark clips with one faint blob. With batch norm a few hundred steps already give
    usable features (tests and smoke runs train that short). Time is never pooled: the per-frame channels
    are concatenated before the feature layer, so the features know the order of the frames (the initial
    direction is the direction before the first bounce). ``features`` (N, width) are the post-ReLU
    penultimate activations; ``forward`` gives (class logits (N, 10), direction logits (N, directions)).
    """

    def __init__(self, geometry: ClipGeometry, width: int = 64, channels: int = 16) -> None:
        super().__init__()
        self.geometry, self.width, self.channels = geometry, width, channels
        c = channels
        self.conv1 = nn.Conv3d(1, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, 2 * c, 3, padding=1)
        self.conv3 = nn.Conv3d(2 * c, 2 * c, 3, padding=1)
        self.norm1, self.norm2, self.norm3 = nn.BatchNorm3d(c), nn.BatchNorm3d(2 * c), nn.BatchNorm3d(2 * c)
        self.feature = nn.Linear(2 * c * geometry.frames, width)
        self.classes = nn.Linear(width, NUM_CLASSES)
        self.directions = nn.Linear(width, geometry.directions)

    def features(self, x: Tensor) -> Tensor:
        scale = self.geometry.digit_size // DIGIT_PIXELS
        if scale > 1:  # digits upscaled from 8x8 are read at their own resolution
            t, h, w = x.shape[2:]
            x = F.adaptive_avg_pool3d(x, (t, max(h // scale, 1), max(w // scale, 1)))
        h = F.max_pool3d(F.relu(self.norm1(self.conv1(x))), (1, 2, 2))
        h = F.max_pool3d(F.relu(self.norm2(self.conv2(h))), (1, 2, 2))
        h = F.relu(self.norm3(self.conv3(h))).mean(dim=(3, 4))  # (N, C, T)
        return F.relu(self.feature(h.flatten(1)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.classes(h), self.directions(h)


def _accuracies(model: VideoClassifier, x: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
    with torch.no_grad():
        classes, directions = [], []
        for part in x.split(256):
            c, d = model(part)
            classes.append(c.argmax(1))
            directions.append(d.argmax(1))
    return {
        "class_accuracy": float((torch.cat(classes) == labels["label"]).float().mean()),
        "direction_accuracy": float((torch.cat(directions) == labels["direction"]).float().mean()),
    }


def train_video_classifier(
    data: MovingDigitsConfig,
    *,
    seed: int = 0,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 64,
    channels: int = 16,
    test_clips: int = 1000,
    device: str = "cpu",
) -> tuple[VideoClassifier, dict[str, float]]:
    """Train on fresh clips of the train digits every step; return (model, held-out accuracies).

    The held-out set is ``test_clips`` clips of the test digits (the digits dataset's split, so none of
    their images was seen in training). Augmentation: small Gaussian pixel noise, so that the features
    do not hinge on exact pixel values a generator reproduces only approximately.
    """
    if data.digits_per_clip != 1:
        raise rr.UserError("the video classifier reads clips of one digit: digits_per_clip must be 1")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train = MovingDigits(attrs.evolve(data, split="train", labels=True))
    test = MovingDigits(attrs.evolve(data, split="test", labels=True, reference_clips=test_clips))
    model = VideoClassifier(ClipGeometry.of(data), width, channels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        motion = train.draw_motion(batch_size, generator)
        labels = train.motion_condition(motion)
        x = train.render(motion)
        x = (x + 0.1 * torch.randn(x.shape, generator=generator)).to(device)
        classes, directions = model(x)
        loss = F.cross_entropy(classes, labels["label"].to(device)) + F.cross_entropy(
            directions, labels["direction"].to(device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval().cpu()
    x, labels = test.reference()
    return model, _accuracies(model, x, labels)


def save_video_classifier(model: VideoClassifier, path: str | os.PathLike[str], accuracy: dict[str, float]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {
        "geometry": json.dumps(attrs.asdict(model.geometry)),
        "width": str(model.width),
        "channels": str(model.channels),
        "test_accuracy": json.dumps(accuracy),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


_CACHE: dict[tuple[str, int], VideoClassifier] = {}


def load_video_classifier(path: str | os.PathLike[str]) -> VideoClassifier:
    """The classifier at ``path`` (cached per file and modification time), in eval mode, without grad."""
    p = Path(path)
    if not p.is_file():
        raise rr.UserError(f"video classifier weights not found: {p} (train them with `{SCRIPT} --out {p}`)")
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    if key not in _CACHE:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(p), "pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
        if "geometry" not in meta:
            raise rr.UserError(f"{p}: not a video classifier written by `{SCRIPT}` (no clip geometry in it)")
        model = VideoClassifier(
            ClipGeometry(**json.loads(meta["geometry"])), int(meta.get("width", 64)), int(meta.get("channels", 16))
        )
        try:
            model.load_state_dict(load_file(str(p)))
        except RuntimeError as exc:  # written by another version of this network
            lines = str(exc).splitlines()
            why = lines[1].strip() if len(lines) > 1 else lines[0]
            raise rr.UserError(
                f"{p}: not this video classifier's weights ({why}); train them again with `{SCRIPT}`"
            ) from None
        _CACHE[key] = model.eval().requires_grad_(False)
    return _CACHE[key]


@torch.no_grad()
def video_features_and_logits(model: VideoClassifier, clips: Tensor, source: str) -> tuple[Tensor, Tensor, Tensor]:
    """(features (N, width), class logits, direction logits), float64, of clips (N, 1, T, H, W).

    ``source`` (the weights file) names the classifier in the error raised for clips of another geometry.
    """
    g = model.geometry
    if tuple(clips.shape[1:]) != (1, g.frames, g.canvas, g.canvas):
        raise rr.UserError(
            f"{source} reads clips of {g.frames} frames of {g.canvas}x{g.canvas} pixels, got samples of shape "
            f"{tuple(clips.shape[1:])}: train one for these clips with `{SCRIPT} --frames ... --canvas ...`"
        )
    features, classes, directions = [], [], []
    for part in clips.float().cpu().split(256):
        h = model.features(part)
        features.append(h)
        classes.append(model.classes(h))
        directions.append(model.directions(h))
    return torch.cat(features).double(), torch.cat(classes).double(), torch.cat(directions).double()
