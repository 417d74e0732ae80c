"""What the per-frame video metrics see: where the digit is in each frame, and the frame cut down to it.

The digit classifier reads 8×8 digits filling their frame, as scikit-learn stores them. A frame of a
clip holds the digit somewhere on a larger canvas, upscaled; a person reading it looks at the digit,
not at the empty canvas. So each frame is cropped to a digit-sized window around the digit's intensity
centroid and average-pooled back to 8×8: real and generated frames go through exactly the same steps.
An upscaled digit's pixels are blocks of ``digit_size / 8`` canvas pixels starting at its inked bounding
box; the window is moved (by less than a block) onto that block grid, so pooling gives back the digit's
own pixels rather than a half-pixel blur of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def as_clips(x: Tensor) -> Tensor:
    """Samples (N, 1, T, H, W) → float32 CPU clips (N, T, H, W); non-finite values become background."""
    x = x.detach().float().cpu()
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"expected clips (N, 1, T, H, W), got {tuple(x.shape)}")
    x = torch.where(torch.isfinite(x), x, torch.full_like(x, -1.0))
    return x[:, 0]


def ink(clips: Tensor) -> Tensor:
    """Per-pixel mass of the digit: brightness above mid-grey, so faint background speckle weighs nothing."""
    return clips.clamp(-1.0, 1.0).clamp(min=0.0).double()


def centroids(clips: Tensor) -> Tensor:
    """Intensity centroids (N, T, 2) in pixels (row, column) of clips (N, T, H, W); a blank frame: the centre."""
    mass = ink(clips)
    h, w = clips.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)
    cols = torch.arange(w, dtype=torch.float64)
    total = mass.sum(dim=(-2, -1))
    r = (mass.sum(dim=-1) * rows).sum(dim=-1)
    c = (mass.sum(dim=-2) * cols).sum(dim=-1)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    found = total > 0
    out = torch.stack((r, c), dim=-1) / total.clamp(min=1e-12)[..., None]
    return torch.where(found[..., None], out, centre)


def digit_crops(clips: Tensor, digit_size: int) -> Tensor:
    """(N·T, 1, 8, 8) digit images: each frame's ``digit_size`` window around its centroid, pooled to 8×8."""
    n, t, h, w = clips.shape
    size = min(digit_size, h, w)
    block = max(size // 8, 1)
    frames = clips.reshape(n * t, h, w)
    centre = centroids(clips).reshape(n * t, 2)
    inked = frames > 0
    first_row = _first_true(inked.any(dim=2))
    first_col = _first_true(inked.any(dim=1))
    top = _onto_blocks((centre[:, 0] - (size - 1) / 2).round().long(), first_row, block, h - size)
    left = _onto_blocks((centre[:, 1] - (size - 1) / 2).round().long(), first_col, block, w - size)
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    crops = frames[torch.arange(n * t)[:, None, None], rows, cols]
    return F.adaptive_avg_pool2d(crops[:, None], 8)


def _first_true(mask: Tensor) -> Tensor:
    """Index of the first True along the last axis (0 where there is none)."""
    hit = mask.any(dim=-1)
    first = mask.long().argmax(dim=-1)
    return torch.where(hit, first, torch.zeros_like(first))


def _onto_blocks(start: Tensor, anchor: Tensor, block: int, last: int) -> Tensor:
    """``start`` moved by at most half a block so that it is ``anchor`` modulo ``block``, then into [0, last]
    by whole blocks (a digit against a wall keeps its block grid)."""
    delta = (anchor - start) % block
    start = start + torch.where(delta > block // 2, delta - block, delta)
    over = torch.div((start - last).clamp(min=0) + block - 1, block, rounding_mode="floor")
    under = torch.div((-start).clamp(min=0) + block - 1, block, rounding_mode="floor")
    return (start - block * over + block * under).clamp(0, last)
