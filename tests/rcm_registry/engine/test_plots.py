"""Sample pictures through matplotlib (axes, a legend naming every class, the metrics in the title) and the plain
pictures without it; the figures are read back from matplotlib's own objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rcm_registry.engine import pictures, plots


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures drawn (each still rendered into the picture; a closed figure keeps its artists)."""
    drawn: list[Any] = []
    render = plots._to_image

    def keep(fig: Any) -> Image.Image:
        drawn.append(fig)
        return render(fig)

    monkeypatch.setattr(plots, "_to_image", keep)
    return drawn


def points() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    samples = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [float("nan"), 0.0], [-1.0, 2.0]])
    labels = torch.tensor([0, 2, 2, 1, 1])
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    return samples, labels, centers


def test_scatter_names_every_class_and_shows_the_metrics(figures: list[Any]) -> None:
    samples, labels, centers = points()

    class Data:
        pass

    data = Data()
    data.centers = centers  # type: ignore[attr-defined]
    metrics = {"mode_coverage": 0.5, "class_accuracy": 0.875}
    image = pictures.samples_picture(samples, {"label": labels}, data, "student, 2 steps", metrics)
    assert image.size == (640, 640) and image.mode == "RGB"
    (fig,) = figures
    (ax,) = fig.axes
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == ["class 0", "class 1", "class 2", "data modes", "1 non-finite left out"]
    assert ax.get_title() == "student, 2 steps\nclass_accuracy 0.875  ·  mode_coverage 0.5"
    assert ax.get_xlabel() and ax.get_ylabel()
    drawn = {names[i]: c.get_offsets() for i, c in enumerate(ax.collections)}
    np.testing.assert_array_equal(drawn["class 2"], samples[1:3].numpy())
    np.testing.assert_array_equal(drawn["class 1"], samples[4:5].numpy())  # the NaN sample is left out
    np.testing.assert_array_equal(drawn["data modes"], centers.numpy())


def test_grids_get_the_title_and_the_picture_itself(figures: list[Any]) -> None:
    images = torch.rand(4, 1, 6, 6) * 2 - 1
    pictures.samples_picture(images, {}, None, "digits", {"digits_fd": 3.25})
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_title() == "digits\ndigits_fd 3.25"
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), np.asarray(pictures.image_grid_png(images)))


def test_without_matplotlib_the_plain_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    samples, labels, _ = points()
    image = pictures.samples_picture(samples, {"label": labels}, None, "teacher", {"mode_coverage": 1.0})
    expected = pictures.scatter_png(samples, labels, title="teacher  mode_coverage 1")
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    images = torch.rand(4, 1, 6, 6)
    assert np.array_equal(
        np.asarray(pictures.samples_picture(images, {}, None, "x")), np.asarray(pictures.image_grid_png(images))
    )


def test_loss_curves_plot_each_logged_loss(figures: list[Any]) -> None:
    records = [
        {
            "iteration": 10,
            "phase": "student",
            "loss": 2.0,
            "loss/scm": 1.5,
            "student/grad_norm": 3.0,
            "lr/student": 1e-4,
        },
        {"iteration": 20, "phase": "critic", "loss": "nan", "loss/fake_score_dsm": 0.5, "lr/student": 1e-4},
        {
            "iteration": 30,
            "phase": "student",
            "loss": 1.0,
            "loss/scm": 0.75,
            "student/grad_norm": 2.0,
            "lr/student": 5e-5,
        },
    ]
    plots.loss_curves_figure(records, title="run")
    (fig,) = figures
    top, bottom = fig.axes
    lines = {line.get_label(): line.get_xydata().tolist() for line in top.lines}
    assert lines == {
        "loss": [[10, 2.0], [30, 1.0]],  # the NaN (written "nan") left out
        "loss/fake_score_dsm": [[20, 0.5]],
        "loss/scm": [[10, 1.5], [30, 0.75]],
    }
    assert top.get_yscale() == "log"
    assert {line.get_label() for line in bottom.lines} == {"lr/student", "student/grad_norm"}
    assert bottom.get_xlabel() == "iteration"
