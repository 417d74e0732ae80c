"""Where a run directory keeps its checkpoints: the newest, and the one of a given iteration."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcm_registry.engine.run_layout import META, checkpoint_at, checkpoint_name, checkpoint_root, latest_checkpoint


def fake_run(tmp_path: Path, complete: list[int], partial: list[int]) -> Path:
    """Checkpoint folders by name only: complete ones hold meta.json, partial ones (a write that died) do not."""
    run = tmp_path / "run"
    for iteration in complete + partial:
        folder = checkpoint_root(run) / checkpoint_name(iteration)
        folder.mkdir(parents=True)
        if iteration in complete:
            (folder / META).write_text("{}")
    return run


def test_checkpoint_at_finds_the_iteration_asked_for(tmp_path: Path) -> None:
    run = fake_run(tmp_path, complete=[250, 500, 1000], partial=[1250])
    assert checkpoint_at(run, 500) == checkpoint_root(run) / "iter_00000500"
    assert latest_checkpoint(run) == checkpoint_root(run) / "iter_00001000"  # 1250 never completed


@pytest.mark.parametrize("iteration", [750, 1250])
def test_a_missing_or_partial_iteration_names_the_ones_there(tmp_path: Path, iteration: int) -> None:
    run = fake_run(tmp_path, complete=[250, 500, 1000], partial=[1250])
    with pytest.raises(FileNotFoundError, match=rf"no complete checkpoint of iteration {iteration} .*250, 500, 1000\)"):
        checkpoint_at(run, iteration)


def test_a_run_without_checkpoints_says_none(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"complete ones: none"):
        checkpoint_at(tmp_path / "nothing", 1000)
