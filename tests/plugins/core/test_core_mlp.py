"""``mlp``: shapes, conditioning, timestep embedding, and its JVP in float64 three ways."""

from __future__ import annotations

import math

import pytest
import torch
import torch.func
from rcm_plugins.core.mlp_network import sinusoidal_embedding
from torch.autograd import forward_ad

import rcm_registry as rr

B = 16

# torch's forward-mode AD scripts its own decompositions on first use, which warns on this torch version
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _inputs(seed: int, scale: float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, 2), generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64) * scale
    vx = torch.randn((B, 2), generator=g, dtype=torch.float64)
    vt = torch.randn(B, generator=g, dtype=torch.float64) * scale
    label = torch.randint(0, 5, (B,), generator=g)
    return x, t, vx, vt, label


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_shapes_and_conditioning(registry: rr.Registry) -> None:
    torch.manual_seed(0)
    net = registry.build("network", "mlp", width=32, depth=2, num_classes=4)
    assert isinstance(net, torch.nn.Module)
    x = torch.randn(B, 2)
    t = torch.full((B,), 500.0, dtype=torch.float64)
    out = net(x, t, label=torch.arange(B) % 4)
    assert out.shape == (B, 2) and out.dtype == torch.float32
    # no label means the null label (index num_classes), for classifier-free guidance
    torch.testing.assert_close(net(x, t), net(x, t, label=torch.full((B,), 4)))
    assert not torch.allclose(net(x, t), net(x, t, label=torch.zeros(B, dtype=torch.long)))
    # a scalar timestep is broadcast over the batch
    torch.testing.assert_close(net(x, 500.0), net(x, t))
    plain = registry.build("network", "mlp", width=32, depth=2)
    with pytest.raises(ValueError, match="num_classes = 0"):
        plain(x, t, label=torch.zeros(B, dtype=torch.long))
    assert registry.get("network", "mlp").provides == frozenset({"jvp"})


@pytest.mark.parametrize("scale", [math.pi / 2, 1000.0])
def test_embedding_resolves_both_time_scales(scale: float) -> None:
    ts = torch.linspace(0.0, scale, 101, dtype=torch.float64)
    emb = sinusoidal_embedding(ts, 64, 1e-3, 100.0)
    assert emb.dtype == torch.float64 and emb.shape == (101, 64)
    assert (emb[1:] - emb[:-1]).norm(dim=1).min().item() > 1.0  # 1% of the range apart: clearly distinct
    assert sinusoidal_embedding(ts.float(), 64, 1e-3, 100.0).dtype == torch.float32
    assert sinusoidal_embedding(ts.bfloat16(), 64, 1e-3, 100.0).dtype == torch.float32


@pytest.mark.parametrize("scale", [math.pi / 2, 1000.0])
def test_jvp_float64(registry: rr.Registry, scale: float) -> None:
    torch.manual_seed(1)
    net = registry.build("network", "mlp", width=48, depth=3, num_classes=5).double()
    x, t, vx, vt, label = _inputs(seed=2, scale=scale)

    def f(x_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return net(x_, t_, label=label)

    # 1. dual tensors, as the engine's tangent pass uses them
    with forward_ad.dual_level():
        out = f(forward_ad.make_dual(x, vx), forward_ad.make_dual(t, vt))
        primal, tangent = forward_ad.unpack_dual(out)
    # 2. torch.func.jvp
    primal_ref, tangent_ref = torch.func.jvp(f, (x, t), (vx, vt))
    # 3. reverse mode: the full Jacobians applied to the direction
    jx, jt = torch.autograd.functional.jacobian(f, (x, t))
    tangent_rev = torch.einsum("bdij,ij->bd", jx, vx) + torch.einsum("bdi,i->bd", jt, vt)

    assert tangent is not None and tangent.dtype == torch.float64
    torch.testing.assert_close(primal, f(x, t), rtol=0, atol=0)
    torch.testing.assert_close(primal_ref, primal, rtol=0, atol=0)
    assert _rel(tangent, tangent_ref) <= 1e-10
    assert _rel(tangent, tangent_rev) <= 1e-10
    assert tangent.norm().item() > 0


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"width": 0}, "width: must be > 0"),
        ({"depth": -1}, "depth: must be > 0"),
        ({"num_classes": -2}, "num_classes: must be >= 0"),
        ({"time_embedding_dim": 63}, "time_embedding_dim: must be an even number"),
        ({"min_frequency": 10.0, "max_frequency": 1.0}, "min_frequency (10.0) must be <= max_frequency"),
        ({"width": 1.5}, "width: expected int"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("network", "mlp", **config)
    assert fragment in str(info.value)
