"""Broken rCM release checkpoints, through every command that reads weights: ``rcm validate``, ``rcm run``,
``rcm sample --weights`` and ``rcm generate --weights`` exit 2 naming the file (and the YAML path), with no
traceback, no run directory, no output file, and the pickle's code never run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rcm_registry import registry
from rcm_registry.engine.checkpoint import save_checkpoint
from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error

RECIPE: dict[str, Any] = {
    "networks": {"student": {"use": "wan2.1-t2v", "size": "tiny", "attention": {"use": "math"}}},
    "phases": {"student": {"losses": [{"use": "flow_matching"}], "optimizer": {"use": "adamw", "lr": 1.0e-4}}},
    "data": {"use": "random_latents", "shape": [16, 1, 4, 4], "text_length": 5, "text_dim": 32},
    "schedule": {"use": "rectified_flow"},
    "sample": {"use": "euler", "steps": 2},
    "run": {"iterations": 1, "batch_size": 1, "device": "cpu"},
}


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _net_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def _evil(tmp: Path) -> Path:
    torch.save({**_net_state(), "net.payload": _Shell(tmp / "ran")}, tmp / "evil.pt")
    return tmp / "evil.pt"


def _truncated(tmp: Path) -> Path:
    torch.save(_net_state(), tmp / "whole.pt")
    data = (tmp / "whole.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 3])
    return tmp / "cut.pt"


def _critic_only(tmp: Path) -> Path:
    torch.save({k.replace("net.", "net_fake_score.", 1): v for k, v in _net_state().items()}, tmp / "critic.pt")
    return tmp / "critic.pt"


#: (case, writes the checkpoint, what stderr must say besides the file's name)
CASES = [
    ("pickle calling code", _evil, "refused: its pickle calls"),
    ("truncated .pt", _truncated, "not a complete torch.save file"),
    ("no student network", _critic_only, "looked for net_ema. or net.); it holds net_fake_score."),
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run of the recipe, for the commands that sample one."""
    net = registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    run = tmp_path / "run"
    save_checkpoint(
        run, 1, models={"student": net.state_dict()}, emas={}, optimizers={}, state={}, recipe=RECIPE, keep=1
    )
    return run


@pytest.mark.parametrize(("case", "write", "says"), CASES, ids=[c[0] for c in CASES])
def test_every_command_refuses_it_before_writing(
    case: str, write: Any, says: str, tmp_path: Path, run_dir: Path
) -> None:
    weights = write(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    data = {**RECIPE, "networks": {"student": {**RECIPE["networks"]["student"], "weights": {"path": str(weights)}}}}
    recipe.write_text(yaml.safe_dump(data))
    named = [str(weights), says]
    assert_user_error(run_cli("validate", str(recipe)), [*named, "networks.student.weights"])
    out_run = tmp_path / "new_run"
    assert_user_error(run_cli("run", str(recipe), "--out", str(out_run)), named, absent=[out_run])
    picture = tmp_path / "s.png"
    result = run_cli("sample", str(run_dir), "--weights", str(weights), "--num", "2", "--out", str(picture))
    assert_user_error(result, named, absent=[picture])
    latents = tmp_path / "g.safetensors"
    result = run_cli(
        "generate", str(recipe), "--weights", str(weights), "--prompt", "a cat", "--shape", "16,1,4,4",
        "--out", str(latents),
    )  # fmt: skip
    assert_user_error(result, named, absent=[latents])
    assert not (tmp_path / "ran").exists()  # the pickle's os.system never ran
