"""Pictures of clips: one strip of frames per clip, strips side by side for long batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcm_registry.engine.pictures import VIDEO_ROWS, image_grid_png, samples_picture, video_strips_png


def test_each_clip_is_a_row_of_its_frames() -> None:
    clips = torch.full((2, 1, 3, 4, 5), -1.0)
    clips[0, 0, 1] = 1.0  # clip 0: only its middle frame white
    clips[1, 0, :, 0, 0] = 1.0  # clip 1: the top-left pixel of every frame
    img = np.asarray(video_strips_png(clips, scale=1, gap=2))
    assert img.shape == (2 * 4 + 2, 3 * 5 + 2)  # frames 1 pixel apart, clips 2
    frame = lambda row, f: img[row * 6 : row * 6 + 4, f * 6 : f * 6 + 5]
    assert (frame(0, 1) == 255).all() and (frame(0, 0) == 0).all() and (frame(0, 2) == 0).all()
    for f in range(3):
        assert frame(1, f)[0, 0] == 255 and (frame(1, f).flatten()[1:] == 0).all()
    assert (img[4:6] == 255).all()  # the gap between the clips is white


def test_columns_and_scale() -> None:
    clips = torch.zeros(5, 1, 2, 3, 3)
    img = video_strips_png(clips, columns=2, scale=3, gap=1)
    assert img.size == (3 * (2 * (2 * 4 - 1) + 1), 3 * (3 * 4 - 1))
    with pytest.raises(ValueError, match="expected"):
        video_strips_png(torch.zeros(2, 3, 4))


def test_samples_picture_shows_clips_as_strips_and_single_frames_as_a_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    from rcm_registry.engine import plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)  # the plain pictures (see test_plots.py)
    clips = torch.zeros(3, 1, 4, 6, 6)
    assert samples_picture(clips, {}, None, "").size == video_strips_png(clips).size
    many = torch.zeros(VIDEO_ROWS + 1, 1, 4, 6, 6)
    assert samples_picture(many, {}, None, "").size == video_strips_png(many, columns=2).size
    images = torch.zeros(4, 1, 1, 6, 6)
    assert samples_picture(images, {}, None, "").size == image_grid_png(images).size
