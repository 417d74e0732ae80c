"""Learning-rate schedules: warmup and decay factors, and that the engine applies them."""

from __future__ import annotations

import math

import pytest
import torch

from rcm_registry.engine.lr_schedule import apply_lr, lr_factor


def test_warmup_is_linear_then_constant() -> None:
    f = [lr_factor(i, warmup=4, decay="constant", total=10, min_ratio=0.0) for i in range(6)]
    assert f == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_reaches_the_floor_at_the_end(decay: str) -> None:
    start = lr_factor(2, warmup=2, decay=decay, total=12, min_ratio=0.1)
    end = lr_factor(12, warmup=2, decay=decay, total=12, min_ratio=0.1)
    assert start == pytest.approx(1.0) and end == pytest.approx(0.1)


def test_cosine_midpoint() -> None:
    mid = lr_factor(5, warmup=0, decay="cosine", total=10, min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_apply_scales_every_group_from_its_base() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [], "lr": 0.2}])
    apply_lr(opt, [0.1, 0.2], 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.1]


def test_trainer_applies_the_phase_schedule(tmp_path) -> None:
    from pathlib import Path

    from rcm_registry import registry
    from rcm_registry.engine.trainer import Trainer
    from rcm_registry.recipe.load import load_recipe
    from rcm_registry.recipe.validate import validate_recipe

    root = Path(__file__).resolve().parents[3]
    data = load_recipe(
        root / "recipes/quickstart/teacher.yaml",
        ["run.iterations=8", "run.batch_size=8", "networks.teacher.width=8", "phases.teacher.lr_warmup=4",
         "phases.teacher.lr_decay=linear", "phases.teacher.optimizer.lr=0.01"],
    )  # fmt: skip
    trainer = Trainer(validate_recipe(data, registry()), tmp_path, progress=False)
    seen = []
    for _ in range(8):
        trainer.step()
        seen.append(trainer.graph.phases["teacher"].optimizer.param_groups[0]["lr"])
    expected = [0.01 * lr_factor(i, warmup=4, decay="linear", total=8, min_ratio=0.0) for i in range(8)]
    assert seen == pytest.approx(expected)
