"""The forward-mode JVP utility against float64 torch.func.jvp, and the JVP-support check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rcm_plugins.attention.math_attention import math_attention
from torch import Tensor, nn

from rcm_registry.jvp import JVPUnsupportedError, check_jvp_support, jvp

D = torch.float64


class Block(nn.Module):
    """A transformer-ish block of standard layers: LayerNorm, attention (math ops), GELU MLP, conv, time MLP."""

    def __init__(self, dim: int = 8, heads: int = 2, sdpa: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.sdpa = heads, sdpa
        self.norm = nn.LayerNorm(dim, dtype=D)
        self.qkv = nn.Linear(dim, 3 * dim, dtype=D)
        self.proj = nn.Linear(dim, dim, dtype=D)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim, dtype=D), nn.GELU(), nn.Linear(2 * dim, dim, dtype=D))
        self.conv = nn.Conv1d(dim, dim, 3, padding=1, dtype=D)
        self.time = nn.Sequential(nn.Linear(1, dim, dtype=D), nn.SiLU())
        self.gn = nn.GroupNorm(2, dim, dtype=D)

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.norm(x) + self.time(timestep.to(x.dtype)[:, None])[:, None, :]
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v) if self.sdpa else math_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        x = x + self.mlp(x)
        return x + self.gn(self.conv(x.transpose(1, 2))).transpose(1, 2)


def _inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, generator=gen, dtype=D)
    t = torch.rand(2, generator=gen, dtype=D) * 1000
    return x, t, torch.randn(x.shape, generator=gen, dtype=D), torch.randn(t.shape, generator=gen, dtype=D)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_jvp_matches_torch_func_jvp_float64() -> None:
    net = Block()
    x, t, dx, dt = _inputs()
    out, tan = jvp(net, (x, t), (dx, dt))
    ref_out, ref_tan = torch.func.jvp(net, (x, t), (dx, dt))
    assert _rel(out, ref_out) <= 1e-12
    assert _rel(tan, ref_tan) <= 1e-10


def test_jvp_holds_none_tangent_constant_and_handles_structures() -> None:
    net = Block()
    x, t, dx, _ = _inputs()

    def two(x: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        y = net(x, t)
        return y, {"sum": y.sum(dim=1), "const": torch.ones(3, dtype=D)}

    (y, extra), (dy, dextra) = jvp(two, (x, t), (dx, None))
    ref_y, ref = torch.func.jvp(lambda x: net(x, t), (x,), (dx,))
    assert _rel(y, ref_y) <= 1e-12 and torch.equal(extra["const"], torch.ones(3, dtype=D))
    assert _rel(dy, ref) <= 1e-10
    assert _rel(dextra["sum"], ref.sum(dim=1)) <= 1e-10
    assert torch.equal(dextra["const"], torch.zeros(3, dtype=D))


def test_jvp_records_no_graph() -> None:
    net = Block()
    x, t, dx, dt = _inputs()
    out, tan = jvp(net, (x.requires_grad_(), t), (dx, dt))
    assert not out.requires_grad and not tan.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_jvp_casts_tangent_dtype_and_checks_shapes() -> None:
    lin = nn.Linear(3, 2, dtype=D)
    x = torch.randn(4, 3, dtype=D)
    dx = torch.randn(4, 3, dtype=torch.float32)
    _, tan = jvp(lin, (x,), (dx,))
    assert tan.dtype == D
    assert _rel(tan, dx.to(D) @ lin.weight.T) <= 1e-12
    with pytest.raises(ValueError, match="shape"):
        jvp(lin, (x,), (torch.randn(3, 3, dtype=D),))


def test_check_jvp_support_passes_for_standard_layers() -> None:
    x, t, _, _ = _inputs()
    check_jvp_support(Block(), (x, t), name="networks.student")


def test_check_jvp_support_names_network_and_fix() -> None:
    # CPU SDPA has no forward-mode AD rule in PyTorch: exactly the failure a fused backend gives.
    x, t, _, _ = _inputs()
    with pytest.raises(JVPUnsupportedError) as info:
        check_jvp_support(Block(sdpa=True), (x, t), name="networks.student")
    text = str(info.value)
    assert "networks.student" in text and "Block" in text
    assert "math" in text and "triton_jvp" in text


def test_check_jvp_support_rejects_non_finite_tangent() -> None:
    class Sqrt(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.sqrt(x - x.detach())  # value 0, derivative 1/(2·0) = inf

    with pytest.raises(JVPUnsupportedError, match="non-finite"):
        check_jvp_support(Sqrt(), (torch.ones(2, dtype=D),), name="networks.odd")
