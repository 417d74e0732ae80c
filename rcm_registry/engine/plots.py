"""Figures people read, through matplotlib (the ``plot`` extra): sample scatter plots with axes, a legend naming
each class's colour and the metrics in the title; image grids and video strips with a title; a run's loss curves.

Every function returns a PIL image, as :mod:`rcm_registry.engine.pictures` does, so callers save and log both
alike. matplotlib is imported inside the functions (it takes a while): ``rcm list`` never pays for it.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from rcm_registry.errors import UserError

#: How to get matplotlib, for the messages that need it.
PLOT_EXTRA = "pip install -e '.[plot]' (or pip install 'rcm-registry[plot]', or matplotlib)"


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib(what: str) -> None:
    """A UserError naming the ``plot`` extra when matplotlib is missing."""
    if not have_matplotlib():
        raise UserError(f"{what} needs matplotlib, which is not installed: {PLOT_EXTRA}")


def metrics_line(metrics: Mapping[str, float]) -> str:
    """``class_accuracy 0.947 · mode_coverage 1.000`` (the metrics under a picture's title)."""
    return "  ·  ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _title(title: str, metrics: Mapping[str, float] | None, width: int = 70) -> str:
    """The title, then the metrics wrapped at ``width`` characters (between two metrics, never inside one)."""
    lines = [title] if title else []
    for name, value in sorted((metrics or {}).items()):
        item = f"{name} {value:.4g}"
        if len(lines) > (1 if title else 0) and len(lines[-1]) + len(item) + 5 <= width:
            lines[-1] += f"  ·  {item}"
        else:
            lines.append(item)
    return "\n".join(lines)


def _to_image(fig: Any) -> Image.Image:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def scatter_figure(
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    centers: torch.Tensor | None = None,
    title: str = "",
    metrics: Mapping[str, float] | None = None,
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """(N, 2) points, one colour per label with the legend naming it (``class k`` unless ``class_names``), the
    data's mode centres as black crosses, equal axes; non-finite points are left out and counted in the legend."""
    plt = _pyplot()
    pts = points.detach().float().cpu().numpy()
    finite = np.isfinite(pts).all(axis=1)
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    colours = plt.get_cmap("tab10")
    if labels is None:
        ax.scatter(pts[finite, 0], pts[finite, 1], s=3, color=colours(0), label="samples")
    else:
        labs = labels.detach().cpu().numpy()
        for k in np.unique(labs[finite]):
            chosen = finite & (labs == k)
            name = class_names[int(k)] if class_names is not None else f"class {int(k)}"
            ax.scatter(pts[chosen, 0], pts[chosen, 1], s=3, color=colours(int(k) % 10), label=name)
    if centers is not None:
        c = centers.detach().float().cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], marker="x", s=40, color="black", linewidths=1, label="data modes")
    if not finite.all():
        ax.plot([], [], " ", label=f"{int((~finite).sum())} non-finite left out")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, color="0.9")
    legend = ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    for handle in legend.legend_handles:  # one readable marker size for the classes and the modes alike
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([25])
    ax.set_title(_title(title, metrics), fontsize=10)
    fig.tight_layout()
    return _to_image(fig)


def picture_figure(picture: Image.Image, *, title: str = "", metrics: Mapping[str, float] | None = None) -> Image.Image:
    """A picture of images (a grid, video strips: one pixel a sample's pixel) under a title with the metrics."""
    plt = _pyplot()
    width, height = picture.size
    inches = max(4.0, min(12.0, width / 100))
    fig, ax = plt.subplots(figsize=(inches, inches * height / width + 0.8))
    grey = picture.mode == "L"
    ax.imshow(np.asarray(picture), cmap="gray" if grey else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(_title(title, metrics), fontsize=10)
    fig.tight_layout()
    return _to_image(fig)


def loss_curves_figure(records: Sequence[Mapping[str, Any]], *, title: str = "") -> Image.Image:
    """The curves of a run's ``metrics.jsonl`` records against the iteration: its losses (``loss``, ``loss/NAME``)
    on a log scale when they stay positive, and below them the phases' gradient norms and learning rates."""
    plt = _pyplot()

    def series(key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for r in records:
            value = r.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(int(r["iteration"]))
                ys.append(float(value))
        return xs, ys

    keys = sorted({k for r in records for k in r})
    losses = [k for k in keys if k == "loss" or k.startswith("loss/")]
    lower = [k for k in keys if k.endswith("/grad_norm") or k.startswith("lr/")]
    fig, axes = plt.subplots(2 if lower else 1, 1, figsize=(8, 7 if lower else 4.5), sharex=True, squeeze=False)
    top = axes[0][0]
    positive = True
    for key in losses:
        xs, ys = series(key)
        positive = positive and all(y > 0 for y in ys)
        top.plot(xs, ys, label=key, linewidth=1.5 if key == "loss" else 1.0)
    if positive:
        top.set_yscale("log")
    top.set_ylabel("loss")
    top.grid(True, color="0.9")
    top.legend(fontsize=8)
    top.set_title(title, fontsize=10)
    if lower:
        bottom = axes[1][0]
        for key in lower:
            xs, ys = series(key)
            bottom.plot(xs, ys, label=key, linewidth=1.0)
        bottom.set_yscale("log" if all(y > 0 for k in lower for y in series(k)[1]) else "linear")
        bottom.set_ylabel("gradient norm, learning rate")
        bottom.grid(True, color="0.9")
        bottom.legend(fontsize=8)
    axes[-1][0].set_xlabel("iteration")
    fig.tight_layout()
    return _to_image(fig)
