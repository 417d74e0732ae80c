"""``networks.ROLE.weights`` has one meaning for every network: the checkpoint its parameters start from.

The engine reads runs and own-key safetensors files for every network; a network family that reads
checkpoints of its own layouts (Wan, Cosmos: native and diffusers) gets every other path in its config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rcm_registry import registry
from rcm_registry.errors import RecipeError
from rcm_registry.recipe.sections import Recipe, WeightsRef
from rcm_registry.recipe.validate import validate_recipe

BASE: dict[str, Any] = {
    "networks": {"net": {"use": "mlp", "dim": 2, "width": 8, "depth": 1}},
    "phases": {"net": {"losses": [{"use": "flow_matching"}], "optimizer": {"use": "adamw", "lr": 1.0e-3}}},
    "data": {"use": "gaussian_mixture_2d"},
    "schedule": {"use": "rectified_flow"},
    "run": {"iterations": 1},
}


#: Data a tiny Wan network takes (the 2-D points of BASE are the mlp's).
TINY_WAN_DATA = {"use": "random_latents", "shape": [16, 1, 2, 2], "text_dim": 32}


def recipe(net: dict[str, Any]) -> Recipe:
    data = copy.deepcopy(BASE)
    data["networks"]["net"] = net
    if net["use"].startswith("wan"):
        data["data"] = TINY_WAN_DATA
    return validate_recipe(data, registry(), "weights-test")


def problems(net: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as info:
        recipe(net)
    return str(info.value)


def fake_run(tmp_path: Path) -> Path:
    """A run directory with one complete checkpoint folder whose recipe trains ``net`` and ``student``
    (validation reads which roles a run has; no weights are read)."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "iter_00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text("{}")
    (ckpt / "recipe.yaml").write_text(
        yaml.safe_dump({"networks": {"net": {}, "student": {}}, "phases": {"net": {}, "student": {}}})
    )
    return run


def test_a_run_directory_is_the_engines_for_any_network(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    mlp = recipe({"use": "mlp", "dim": 2, "width": 8, "depth": 1, "weights": {"path": str(run), "ema": False}})
    assert mlp.networks["net"].weights == WeightsRef(path=str(run), format="auto", ema=False, role=None)
    wan = recipe({"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(run), "role": "student"}})
    role = wan.networks["net"]
    assert role.weights is not None and role.weights.role == "student"
    assert role.spec.config.weights is None  # the family does not try to read a run as its own layout


def test_a_path_alone_means_the_same_as_path_in_a_mapping(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    net = recipe({"use": "mlp", "dim": 2, "width": 8, "depth": 1, "weights": str(run)})
    assert net.networks["net"].weights == WeightsRef(path=str(run))


def test_other_checkpoints_go_to_the_family_that_reads_them(tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    folder.mkdir()
    # The family validates its own formats: a typo is named at the recipe path it was written at.
    text = problems({"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(folder), "format": "natve"}})
    assert "networks.net.weights.format: expected one of 'auto', 'native', 'diffusers', 'rcm-release'" in text


def test_a_family_layout_on_a_network_that_reads_none_is_named() -> None:
    text = problems({"use": "mlp", "dim": 2, "width": 8, "depth": 1, "weights": {"path": "x", "format": "native"}})
    assert "networks.net.weights.format: 'native' is a layout that network families read" in text
    assert "'auto', 'run', 'safetensors'" in text


def test_run_settings_on_a_family_checkpoint_are_named(tmp_path: Path) -> None:
    # role / ema pick a network of a run or of an rCM release checkpoint; a native folder holds one network.
    folder = tmp_path / "t"
    folder.mkdir()
    text = problems({"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(folder), "role": "student"}})
    assert f"networks.net.weights: {folder}: weights.role chooses a network of an rcm run directory" in text
    text = problems(
        {"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(folder), "format": "native", "ema": False}}
    )
    assert "weights.ema chooses a network" in text and "this is a native checkpoint" in text
    text = problems({"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(folder), "role": "x"}})
    assert "networks.net.weights.role: expected one of 'student', 'teacher', 'fake_score', got 'x'" in text


def test_format_run_needs_a_run(tmp_path: Path) -> None:
    text = problems(
        {"use": "mlp", "dim": 2, "width": 8, "depth": 1, "weights": {"path": str(tmp_path), "format": "run"}}
    )
    assert f"networks.net.weights.path: {tmp_path} is not a run directory or checkpoint folder" in text
