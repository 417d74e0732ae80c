"""PNG pictures of samples without plotting libraries: 2-D scatter plots, image grids and video strips (and
:func:`samples_picture`, which draws them through matplotlib when it is installed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rcm_registry.atomic import atomic_file

_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def scatter_png(
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    size: int = 512,
    extent: float | None = None,
    centers: torch.Tensor | None = None,
    title: str = "",
) -> Image.Image:
    """A scatter plot of (N, 2) points, coloured by label, with optional mode centres as crosses."""
    pts = points.detach().float().cpu().numpy()
    finite = np.isfinite(pts).all(axis=1)
    pts = pts[finite]
    if extent is None:
        extent = float(np.percentile(np.abs(pts), 99.5)) * 1.1 if len(pts) else 1.0
        extent = max(extent, 1e-6)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    half = size / 2

    def to_px(x: float, y: float) -> tuple[float, float]:
        return half + x / extent * half * 0.95, half - y / extent * half * 0.95

    draw.line([(0, half), (size, half)], fill=(230, 230, 230))
    draw.line([(half, 0), (half, size)], fill=(230, 230, 230))
    labs = labels.detach().cpu().numpy()[finite] if labels is not None else None
    for i, (x, y) in enumerate(pts):
        px, py = to_px(float(x), float(y))
        color = _PALETTE[int(labs[i]) % len(_PALETTE)] if labs is not None else (31, 119, 180)
        draw.ellipse([px - 1.2, py - 1.2, px + 1.2, py + 1.2], fill=color)
    if centers is not None:
        for cx, cy in centers.detach().cpu().numpy():
            px, py = to_px(float(cx), float(cy))
            draw.line([(px - 5, py), (px + 5, py)], fill=(0, 0, 0), width=1)
            draw.line([(px, py - 5), (px, py + 5)], fill=(0, 0, 0), width=1)
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0))
    return img


def image_grid_png(images: torch.Tensor, *, columns: int | None = None, scale: int = 4) -> Image.Image:
    """A grid of (N, C, H, W) or (N, C, T, H, W) (first frame) images in [-1, 1]."""
    x = images.detach().float().cpu()
    if x.ndim == 5:
        x = x[:, :, 0]
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) or (N, C, T, H, W) images, got shape {tuple(images.shape)}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        x = x[:, :1]
        c = 1
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (h + 1), cols * (w + 1))
    for i in range(n):
        r, col = divmod(i, cols)
        grid[:, r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = x[i]
    return _grid_png(grid, scale)


def video_strips_png(videos: torch.Tensor, *, columns: int = 1, scale: int = 4, gap: int = 3) -> Image.Image:
    """Clips (N, C, T, H, W) in [-1, 1] as strips: each clip's T frames left to right on one row.

    Frames are 1 pixel apart, clips ``gap`` pixels; ``columns`` strips stand side by side (clip i in row
    i // columns), so long batches stay viewable.
    """
    x = videos.detach().float().cpu()
    if x.ndim != 5:
        raise ValueError(f"expected (N, C, T, H, W) clips, got shape {tuple(videos.shape)}")
    n, c, t, h, w = x.shape
    if c not in (1, 3):
        x, c = x[:, :1], 1
    strip_w = t * (w + 1) - 1
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + gap) - gap, columns * (strip_w + gap) - gap)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = r * (h + gap), col * (strip_w + gap)
        for f in range(t):
            grid[:, top : top + h, left + f * (w + 1) : left + f * (w + 1) + w] = x[i, :, f]
    return _grid_png(grid, scale)


#: Rows of strips in the picture of a batch of clips; longer batches get more strips side by side.
VIDEO_ROWS = 32


def _grid_png(grid: torch.Tensor, scale: int) -> Image.Image:
    """A (C, H, W) canvas in [-1, 1] (C = 1: grey, 3: RGB) as a picture, each pixel ``scale`` × ``scale``."""
    c = grid.shape[0]
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def samples_picture(
    samples: torch.Tensor,
    condition: dict[str, torch.Tensor],
    dataset: object,
    title: str,
    metrics: Mapping[str, float] | None = None,
) -> Image.Image:
    """The natural picture of a batch of samples: a labelled scatter plot for 2-D points, a strip of frames
    per clip for (N, C, T, H, W) samples with T > 1, else an image grid; ``metrics`` go under the title.

    With matplotlib (the ``plot`` extra) the picture has axes and a legend naming each class's colour
    (:mod:`rcm_registry.engine.plots`); without it, these plain pictures with the title written in."""
    from rcm_registry.engine import plots

    fancy = plots.have_matplotlib()
    if samples.ndim == 2 and samples.shape[1] == 2:
        labels = condition.get("label")
        labels = labels if labels is not None and labels.ndim == 1 else None
        centers = getattr(dataset, "centers", None)
        if fancy:
            return plots.scatter_figure(samples, labels, centers=centers, title=title, metrics=metrics)
        line = plots.metrics_line(metrics or {})
        return scatter_png(samples, labels, centers=centers, title=f"{title}  {line}" if line else title)
    if samples.ndim == 5 and samples.shape[2] > 1:
        picture = video_strips_png(samples, columns=math.ceil(samples.shape[0] / VIDEO_ROWS))
    else:
        picture = image_grid_png(samples)
    return plots.picture_figure(picture, title=title, metrics=metrics) if fancy else picture


def save_png_atomic(img: Image.Image, path: Path) -> None:
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
