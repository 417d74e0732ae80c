"""``wan2.1-labels``: shapes, label conditioning, forward-mode AD against torch.func.jvp, recipes."""

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


def test_shapes_and_label_conditioning() -> None:
    net = _net().eval()
    x = torch.randn(5, 1, 1, 8, 8)
    t = torch.rand(5) * 10
    label = torch.tensor([0, 1, 2, 3, 10])
    with torch.no_grad():
        out = net(x, t, label=label)
        null = net(x, t)
        other = net(x, t, label=torch.tensor([9, 9, 9, 9, 10]))
    assert out.shape == x.shape
    torch.testing.assert_close(null[4], out[4])  # no label = the null label
    assert (out[:4] - other[:4]).abs().amax() > 1e-4  # the label reaches the output
    with pytest.raises(ValueError, match="label must have shape"):
        net(x, t, label=label[:2])


def test_jvp_matches_torch_func_jvp_in_float64() -> None:
    net = _net(label_tokens=3).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 1, 8, 8, generator=g, dtype=torch.float64)
    t = 10 * torch.rand(3, generator=g, dtype=torch.float64)
    dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(3, generator=g, dtype=torch.float64)
    label = torch.tensor([2, 7, 10])

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b, label=label)

    ref_out, ref_tangent = torch.func.jvp(f, (x, t), (dx, dt))
    out, tangent = jvp(f, (x, t), (dx, dt))
    assert ref_tangent.abs().amax() > 0
    assert (out - ref_out).abs().amax() <= 1e-12
    assert ((tangent - ref_tangent).norm() / ref_tangent.norm()) <= 1e-10


def test_config_needs_a_size_or_the_width_fields() -> None:
    with pytest.raises(rr.RecipeError, match="give `size`"):
        rr.registry().config("network", "wan2.1-labels")


DIGITS = sorted((ROOT / "recipes" / "digits").glob("*.yaml"))


@pytest.mark.parametrize("recipe", DIGITS, ids=[p.name for p in DIGITS])
def test_digits_recipes_validate(recipe: Path) -> None:
    validate_recipe(load_recipe(recipe), rr.registry(), str(recipe), open_files=False)  # teacher runs: not here


def test_there_are_digits_recipes_for_every_method() -> None:
    assert {p.stem for p in DIGITS} >= {"teacher", "scm", "dcm", "dmd", "rcm"}
