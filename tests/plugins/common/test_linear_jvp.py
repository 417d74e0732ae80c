"""The one-matmul forward-mode rule of ``rcm_plugins.common.layers.linear``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from rcm_plugins.common.layers import Linear, generic_linear_jvp, linear
from torch import Tensor
from torch.autograd import forward_ad
from torch.profiler import ProfilerActivity, profile

D = torch.float64


def _inputs(seed: int, bias: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 7, 5, generator=gen, dtype=D)
    tx = torch.randn(2, 7, 5, generator=gen, dtype=D)
    w = torch.randn(3, 5, generator=gen, dtype=D)
    b = torch.randn(3, generator=gen, dtype=D) if bias else None
    return x, tx, w, b


def _dual_call(fn: Callable[[Tensor], Tensor], x: Tensor, tx: Tensor) -> tuple[Tensor, Tensor]:
    with forward_ad.dual_level():
        out = forward_ad.unpack_dual(fn(forward_ad.make_dual(x, tx)))
        return out.primal.clone(), out.tangent.clone()


def _matmuls(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    # The GEMM calls themselves (aten::matmul and aten::linear only dispatch to them).
    return sum(1 for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_matches_pytorch_rule_and_float64_jvp(bias: bool) -> None:
    x, tx, w, b = _inputs(1, bias)
    ours = _dual_call(lambda d: linear(d, w, b), x, tx)
    theirs = _dual_call(lambda d: F.linear(d, w, b), x, tx)
    ref = torch.func.jvp(lambda a: F.linear(a, w, b), (x,), (tx,))
    for got, generic, want in zip(ours, theirs, ref, strict=True):
        assert torch.equal(got, generic)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tangent_costs_one_matmul() -> None:
    x, tx, w, b = _inputs(2)
    with torch.no_grad(), forward_ad.dual_level():
        dual = forward_ad.make_dual(x, tx)
        # The primal's matmul and the tangent's: PyTorch's own rule adds a matmul against zeros.
        assert _matmuls(lambda: linear(dual, w, b)) == 2
        with generic_linear_jvp():
            assert _matmuls(lambda: linear(dual, w, b)) == _matmuls(lambda: F.linear(dual, w, b))


def test_weight_tangents_take_pytorch_rule() -> None:
    x, tx, w, b = _inputs(3)
    tw = torch.randn_like(w)
    with forward_ad.dual_level():
        out = forward_ad.unpack_dual(linear(forward_ad.make_dual(x, tx), forward_ad.make_dual(w, tw), b))
        got = out.tangent.clone()
    _, want = torch.func.jvp(lambda a, m: F.linear(a, m, b), (x, w), (tx, tw))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_functorch_jvp_and_plain_calls() -> None:
    x, tx, w, b = _inputs(4)
    got = torch.func.jvp(lambda a: linear(a, w, b), (x,), (tx,))
    want = torch.func.jvp(lambda a: F.linear(a, w, b), (x,), (tx,))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))


def test_primal_keeps_its_gradient_under_dual_tensors() -> None:
    # The fused "primal with grad + tangent" pass: gradients of the primal output reach input and weights.
    x, tx, w, b = _inputs(5)
    layer = Linear(5, 3, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    leaf = x.clone().requires_grad_()
    with forward_ad.dual_level():
        y = forward_ad.unpack_dual(layer(forward_ad.make_dual(leaf, tx))).primal
        y.square().sum().backward()
    ref_leaf = x.clone().requires_grad_()
    ref_w, ref_b = w.clone().requires_grad_(), b.clone().requires_grad_()
    F.linear(ref_leaf, ref_w, ref_b).square().sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)
    torch.testing.assert_close(layer.weight.grad, ref_w.grad)
    torch.testing.assert_close(layer.bias.grad, ref_b.grad)


def test_linear_module_keeps_nn_linear_state_dict() -> None:
    layer = Linear(5, 3)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
