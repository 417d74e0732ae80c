"""A small convolutional digit classifier whose penultimate features the digits metrics measure in.

It plays the part Inception-v3 plays for FID: a network trained once (seeded, on the train part of
the digits split) whose feature space the Fréchet distance, precision/recall and diversity are taken
in, and whose predictions score whether a sample shows the digit it was asked for.
``python benchmarks/train_digit_classifier.py`` writes the weights the metrics load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from rcm_plugins.digits.digits_dataset import NUM_CLASSES, load_digits_tensors, split_indices, to_model_space
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry.atomic import atomic_file

#: Where the training script writes the weights and the metrics look for them by default.
DEFAULT_PATH = "runs/digits/classifier.safetensors"


class DigitClassifier(nn.Module):
    """Three 3×3 convolutions (one 2× max-pool), global average pool, a ``width``-wide feature layer.

    Input (N, 1, 8, 8) in [-1, 1]; ``features`` (N, width) are the post-ReLU penultimate activations.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.feature = nn.Linear(64, width)
        self.out = nn.Linear(width, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h)).mean(dim=(2, 3))
        return F.relu(self.feature(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))


def as_images(x: Tensor) -> Tensor:
    """Samples (N, 1, 1, H, W) or (N, 1, H, W) → (N, 1, 8, 8) float32 (average-pooled if upsampled)."""
    x = x.detach().float().cpu()
    if x.ndim == 5:
        x = x[:, :, 0]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (N, 1, 1, H, W) or (N, 1, H, W) digit images, got {tuple(x.shape)}")
    if x.shape[-2:] != (8, 8):
        x = F.adaptive_avg_pool2d(x, 8)
    return x


def train_classifier(
    *, seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3, width: int = 64
) -> tuple[DigitClassifier, float]:
    """Train on the train part of the default split (seed 0, 20 % test); return (model, test accuracy).

    Augmentation: one-pixel random shifts and small Gaussian pixel noise, so that the features do not
    hinge on exact pixel values that a generator reproduces only approximately.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_digits_tensors()
    train, test = split_indices(images.shape[0], 0.2, 0)
    x = to_model_space(images)[:, :, 0]
    model = DigitClassifier(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))  # background is -1, so the wrap-around is empty
            xb = xb + 0.1 * torch.randn(xb.shape, generator=gen)
            loss = F.cross_entropy(model(xb), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == labels[test]).float().mean())
    return model, accuracy


def save_classifier(model: DigitClassifier, path: str | os.PathLike[str], accuracy: float) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={"width": str(model.width), "test_accuracy": json.dumps(accuracy)})


_CACHE: dict[tuple[str, int], DigitClassifier] = {}


def load_classifier(path: str | os.PathLike[str]) -> DigitClassifier:
    """The classifier at ``path`` (cached per file and modification time), in eval mode, without grad."""
    p = Path(path)
    if not p.is_file():
        raise rr.UserError(
            f"digit classifier weights not found: {p} (train them with `python benchmarks/train_digit_classifier.py`)"
        )
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    if key not in _CACHE:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(p), "pt") as f:
            width = int((f.metadata() or {}).get("width", 64))
        model = DigitClassifier(width)
        model.load_state_dict(load_file(str(p)))
        _CACHE[key] = model.eval().requires_grad_(False)
    return _CACHE[key]


@torch.no_grad()
def features_and_logits(model: DigitClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features (N, width), logits (N, 10)), float64, for digit samples in the model space."""
    h = model.features(as_images(x))
    return h.double(), model.out(h).double()
