"""The attention backends through the registry: math (reference JVP) and sdpa (primal only)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rcm_plugins.attention.math_attention import math_attention
from rcm_plugins.attention.sdpa_attention import DualTensorError
from torch.autograd import forward_ad

import rcm_registry as rr


def _rand(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _qkv(b: int, h: int, nq: int, nk: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    return [_rand(s, seed + i, dtype) for i, s in enumerate([(b, h, nq, d), (b, h, nk, d), (b, h, nk, d)])]


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _build(registry: rr.Registry, name: str) -> Any:
    return registry.build("attention", name)


def test_backends_registered(registry: rr.Registry) -> None:
    assert {"math", "sdpa"} <= set(registry.names("attention"))
    assert "jvp" in registry.get("attention", "math").provides
    assert "jvp" not in registry.get("attention", "sdpa").provides


def test_math_matches_sdpa_primal(registry: rr.Registry) -> None:
    q, k, v = _qkv(2, 3, 17, 9, 16, seed=0)
    for scale in (None, 0.3):
        got = _build(registry, "math")(q, k, v, scale=scale)
        ref = F.scaled_dot_product_attention(q, k, v, scale=scale)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_math_accepts_strided_bshd_views(registry: rr.Registry) -> None:
    # Networks produce (B, S, H, D) and transpose to (B, H, S, D) without copying.
    q = _rand((2, 11, 4, 8), seed=1).transpose(1, 2)
    k = _rand((2, 7, 4, 8), seed=2).transpose(1, 2)
    v = _rand((2, 7, 4, 8), seed=3).transpose(1, 2)
    assert not q.is_contiguous()
    got = _build(registry, "math")(q, k, v)
    ref = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_math_bf16_upcast_close_to_float64(registry: rr.Registry) -> None:
    q, k, v = _qkv(1, 2, 33, 21, 32, seed=2)
    ref = math_attention(q, k, v)
    got = _build(registry, "math")(*(t.bfloat16() for t in (q, k, v)))
    assert got.dtype == torch.bfloat16
    assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-2


def test_math_forward_ad_matches_func_jvp(registry: rr.Registry) -> None:
    q, k, v = _qkv(2, 2, 13, 6, 8, seed=3)
    tq, tk, tv = _qkv(2, 2, 13, 6, 8, seed=10)
    attn = _build(registry, "math")
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip((q, k, v), (tq, tk, tv), strict=True)]
        out = forward_ad.unpack_dual(attn(*duals))
    assert out.tangent is not None
    # Reference tangent: a central finite difference of SDPA's math in float64, independent of forward AD.
    eps = 1e-6
    plus = F.scaled_dot_product_attention(q + eps * tq, k + eps * tk, v + eps * tv)
    minus = F.scaled_dot_product_attention(q - eps * tq, k - eps * tk, v - eps * tv)
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close(out.tangent, fd, rtol=1e-6, atol=1e-7)
    _, jvp = torch.func.jvp(lambda a, b, c: math_attention(a, b, c), (q, k, v), (tq, tk, tv))
    torch.testing.assert_close(out.tangent, jvp, rtol=1e-12, atol=1e-12)


def test_sdpa_primal(registry: rr.Registry) -> None:
    q, k, v = _qkv(1, 2, 10, 12, 16, seed=4, dtype=torch.float32)
    got = _build(registry, "sdpa")(q, k, v, scale=0.2)
    torch.testing.assert_close(got, math_attention(q, k, v, scale=0.2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dual_index", [0, 1, 2])
def test_sdpa_refuses_dual_tensors(registry: rr.Registry, dual_index: int) -> None:
    qkv = _qkv(1, 2, 10, 12, 16, seed=5, dtype=torch.float32)
    attn = _build(registry, "sdpa")
    with forward_ad.dual_level():
        qkv[dual_index] = forward_ad.make_dual(qkv[dual_index], torch.ones_like(qkv[dual_index]))
        with pytest.raises(DualTensorError, match="triton_jvp") as info:
            attn(*qkv)
    assert "'math'" in str(info.value)
    assert isinstance(info.value, rr.UserError)
