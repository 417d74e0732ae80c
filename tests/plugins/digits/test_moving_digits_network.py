"""``wan2.1-labels`` on clips (T > 1) with a second label (the direction), and the moving-digits recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rcm_registry as rr
from rcm_registry.jvp import jvp
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"dim": 32, "num_heads": 2, "num_layers": 2, "ffn_dim": 48, "text_dim": 16, "freq_dim": 16}


def _net(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return rr.registry().build("network", "wan2.1-labels", **SMALL, attention={"use": "math"}, **kw)


def test_clips_and_the_direction_label() -> None:
    net = _net(patch_size=[1, 4, 4], extra_labels={"direction": 8}).eval()
    x = torch.randn(3, 1, 5, 16, 16)
    t = torch.rand(3) * 10
    label = torch.tensor([1, 2, 10])
    with torch.no_grad():
        out = net(x, t, label=label, direction=torch.tensor([0, 3, 8]))
        other = net(x, t, label=label, direction=torch.tensor([5, 3, 8]))
        no_direction = net(x, t, label=label)
        moved = x.clone()
        moved[:, :, 0] += 1.0
        later = net(moved, t, label=label, direction=torch.tensor([0, 3, 8]))
    assert out.shape == x.shape
    assert (out[0] - other[0]).abs().amax() > 1e-4  # the direction reaches the output
    torch.testing.assert_close(out[1:], other[1:])
    torch.testing.assert_close(no_direction[2], out[2])  # missing = the null direction
    assert (later - out)[:, :, 4].abs().amax() > 1e-4  # frames see each other
    with pytest.raises(ValueError, match="unexpected condition speed"):
        net(x, t, label=label, speed=label)
    with pytest.raises(ValueError, match="direction must have shape"):
        net(x, t, label=label, direction=label[:2])


def test_extra_labels_leave_the_plain_network_as_it_was() -> None:
    plain = _net()
    assert not any(k.startswith("extra_embeddings") for k in plain.state_dict())
    both = _net(extra_labels={"direction": 8})
    assert both.state_dict()["extra_embeddings.direction.weight"].shape == (9, 4 * 16)
    with pytest.raises(rr.RecipeError, match="not an extra label"):
        rr.registry().config("network", "wan2.1-labels", **SMALL, extra_labels={"label": 3})


def test_clip_jvp_matches_torch_func_jvp_in_float64() -> None:
    net = _net(patch_size=[1, 4, 4], extra_labels={"direction": 8}).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 3, 8, 8, generator=g, dtype=torch.float64)
    t = 10 * torch.rand(2, generator=g, dtype=torch.float64)
    dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(2, generator=g, dtype=torch.float64)
    cond = {"label": torch.tensor([2, 10]), "direction": torch.tensor([4, 8])}

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b, **cond)

    ref_out, ref_tangent = torch.func.jvp(f, (x, t), (dx, dt))
    out, tangent = jvp(f, (x, t), (dx, dt))
    assert ref_tangent.abs().amax() > 0
    assert (out - ref_out).abs().amax() <= 1e-12
    assert ((tangent - ref_tangent).norm() / ref_tangent.norm()) <= 1e-10


RECIPES = sorted((ROOT / "recipes" / "moving_digits").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_moving_digits_recipes_validate(recipe: Path) -> None:
    validate_recipe(load_recipe(recipe), rr.registry(), str(recipe), open_files=False)  # teacher runs: not here


def test_there_are_moving_digits_recipes_for_every_method_at_both_sizes() -> None:
    methods = {"teacher", "scm", "dcm", "dmd", "rcm"}
    assert {p.stem for p in RECIPES} >= methods | {f"{m}_tiny" for m in methods}
    for method in methods:
        gpu = load_recipe(RECIPES[0].parent / f"{method}.yaml")
        tiny = load_recipe(RECIPES[0].parent / f"{method}_tiny.yaml")
        assert gpu["run"]["precision"] == "bf16" and tiny["run"]["precision"] == "fp32"
        if method != "teacher":
            assert gpu["networks"]["student"]["attention"] == {"use": "triton_jvp"}
            assert tiny["networks"]["student"]["attention"] == {"use": "math"}
            assert "ema" in gpu["phases"]["student"]
