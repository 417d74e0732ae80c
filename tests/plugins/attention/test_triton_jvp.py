"""The triton_jvp backend through the registry and forward-mode AD (interpreter on CPU, see conftest)."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rcm_plugins.attention.triton_jvp_attention import TritonUnavailableError
from torch.autograd import forward_ad

import rcm_registry as rr

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.fixture
def attn() -> Any:
    return rr.registry().build("attention", "triton_jvp")


def test_registered_with_jvp() -> None:
    component = rr.registry().get("attention", "triton_jvp")
    assert "jvp" in component.provides
    with pytest.raises(ValueError):
        component.config(primal="flash")


def test_forward_ad_matches_func_jvp(attn: Any) -> None:
    b, nq, nk, h, d = 2, 37, 29, 3, 32
    # (B, S, H, D) tensors viewed as (B, H, S, D), as networks call it.
    q, k, v = (rand(b, n, h, d, seed=i).transpose(1, 2) for i, n in enumerate((nq, nk, nk)))
    tq, tk, tv = (rand(b, n, h, d, seed=10 + i).transpose(1, 2) for i, n in enumerate((nq, nk, nk)))
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip((q, k, v), (tq, tk, tv), strict=True)]
        out = forward_ad.unpack_dual(attn(*duals))
        assert out.tangent is not None
        o, to = out.primal.clone(), out.tangent.clone()
    o_ref, to_ref = torch.func.jvp(
        math_attention, (q.double(), k.double(), v.double()), (tq.double(), tk.double(), tv.double())
    )
    assert rel_err(o, o_ref) <= 1e-5
    assert rel_err(to, to_ref) <= 1e-5


def test_cross_attention_without_key_tangents(attn: Any) -> None:
    q, tq = rand(1, 2, 50, 64, seed=1), rand(1, 2, 50, 64, seed=2)
    k, v = rand(1, 2, 13, 64, seed=3), rand(1, 2, 13, 64, seed=4)
    with forward_ad.dual_level():
        out = forward_ad.unpack_dual(attn(forward_ad.make_dual(q, tq), k, v))
        to = out.tangent.clone()
    _, to_ref = torch.func.jvp(lambda x: math_attention(x, k.double(), v.double()), (q.double(),), (tq.double(),))
    assert rel_err(to, to_ref) <= 1e-5


def test_primal_with_grad_and_tangent(attn: Any) -> None:
    q, k, v = (rand(2, 2, n, 16, seed=20 + i).requires_grad_() for i, n in enumerate((40, 24, 24)))
    tq, tk, tv = (rand(2, 2, n, 16, seed=30 + i) for i, n in enumerate((40, 24, 24)))
    do = rand(2, 2, 40, 16, seed=40)
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip((q, k, v), (tq, tk, tv), strict=True)]
        out = attn(*duals)
        primal = forward_ad.unpack_dual(out).primal
        grads = torch.autograd.grad(primal, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*leaves), leaves, do.double())
    for g, r in zip(grads, ref, strict=True):
        assert rel_err(g, r) <= 1e-5


@pytest.mark.parametrize("primal", ["sdpa", "kernel"])
def test_primal_only_calls(primal: str) -> None:
    attn = rr.registry().build("attention", "triton_jvp", primal=primal)
    q, k, v = (rand(1, 2, n, 32, seed=50 + i).requires_grad_() for i, n in enumerate((33, 21, 21)))
    o = attn(q, k, v, scale=0.2)
    ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), scale=0.2)
    assert rel_err(o.detach(), ref.double()) <= 1e-5
    o.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_unsupported_device_is_a_clear_error(attn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rcm_kernels import attention_jvp

    if DEVICE.type == "cuda":
        pytest.skip("CUDA tensors are supported")
    monkeypatch.setattr(attention_jvp, "interpreter_active", lambda: False)
    q = rand(1, 1, 8, 16, seed=60)
    with forward_ad.dual_level(), pytest.raises(TritonUnavailableError, match="'math'"):
        attn(forward_ad.make_dual(q, q), q, q)


def test_missing_triton_is_a_clear_error(attn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as it does without Triton installed.
    monkeypatch.setitem(sys.modules, "rcm_kernels.attention_jvp", None)
    q = rand(1, 1, 8, 16, seed=61)
    with forward_ad.dual_level(), pytest.raises(TritonUnavailableError, match="needs Triton"):
        attn(forward_ad.make_dual(q, q), q, q)
