"""The fused token-wise kernels (modulated layer norm, gated residual, RMS norm + RoPE) and their autograd ops.

Kernels against float64 ``torch.func.jvp`` of the plain-torch references on inputs rounded to the kernel's
dtype; the ``torch.autograd.Function`` wrappers through dual tensors, the fused "primal with grad + tangent"
pass and backward; and whole tiny Wan2.1 / Cosmos-Predict2 networks with the kernels switched in against
the same networks on the reference path. On a CPU-only machine these run in Triton's interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from rcm_plugins.common import fused_ops as FO
from torch import Tensor

import rcm_registry as rr
from rcm_kernels import gated_residual as GR
from rcm_kernels import layer_norm_affine as LN
from rcm_kernels import rms_norm_rope as RR
from rcm_registry.jvp import jvp

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# fp32: kernel arithmetic vs float64. bf16: the outputs' own rounding (2^-9 relative), up to twice for the
# RMS norm + RoPE, which rounds between norm and rotation as the reference networks do.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def rel_err(x: Tensor, ref: Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float32, std: float = 1.0) -> Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype).to(DEVICE)


def reference_jvp(fn: Callable[..., Tensor], primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]) -> Any:
    return torch.func.jvp(fn, tuple(p.double() for p in primals), tuple(t.double() for t in tangents))


LN_CASES = [  # (B, S, D, groups, batch of the modulation)
    (2, 6, 37, 3, 2),
    (1, 15, 64, 1, 1),
    (3, 4, 130, 2, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "s", "d", "groups", "bm"), LN_CASES)
def test_layer_norm_affine_matches_float64(dtype: torch.dtype, b: int, s: int, d: int, groups: int, bm: int) -> None:
    g = torch.Generator().manual_seed(b * 100 + d)
    x, tx = randn(b, s, d, gen=g, dtype=dtype, std=3.0), randn(b, s, d, gen=g, dtype=dtype)
    mul, add, tmul, tadd = (randn(bm, groups, d, gen=g) for _ in range(4))
    ref = lambda x, m, a: FO._layer_norm_affine_reference(x, m, a, 1e-6, groups)
    y64, t64 = reference_jvp(ref, (x, mul, add), (tx, tmul, tadd))
    y = LN.layer_norm_affine(x, mul, add, 1e-6, groups)
    ty = LN.layer_norm_affine_jvp(x, tx, mul, tmul, tadd, 1e-6, groups)
    assert y.dtype == ty.dtype == dtype
    assert rel_err(y, y64) < TOL[dtype]
    assert rel_err(ty, t64) < TOL[dtype]
    # Tangents on x only, and an affine (D,) weight/bias: Wan's cross-attention norm.
    w, bias = randn(d, gen=g), randn(d, gen=g)
    ref = lambda x: FO._layer_norm_affine_reference(x, w.double(), bias.double(), 1e-6, 1)
    y64, t64 = reference_jvp(ref, (x,), (tx,))
    assert rel_err(LN.layer_norm_affine(x, w, bias, 1e-6), y64) < TOL[dtype]
    assert rel_err(LN.layer_norm_affine_jvp(x, tx, w, None, None, 1e-6), t64) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "s", "d", "groups", "bm"), [*LN_CASES, (2, 70, 48, 1, 0)])
def test_layer_norm_affine_backward_matches_float64(
    dtype: torch.dtype, b: int, s: int, d: int, groups: int, bm: int
) -> None:
    # bm = 0: a plain affine layer norm, one (D,) weight and bias for every token. 70 tokens a group and
    # 32 rows a program leave a partial last program.
    g = torch.Generator().manual_seed(b * 10 + d)
    x, dy = randn(b, s, d, gen=g, dtype=dtype, std=3.0), randn(b, s, d, gen=g, dtype=dtype)
    shape = (d,) if bm == 0 else (bm, groups, d)
    mul, add = randn(*shape, gen=g), randn(*shape, gen=g)
    leaves = [t.double().requires_grad_() for t in (x, mul, add)]
    FO._layer_norm_affine_reference(*leaves, 1e-6, groups).backward(dy.double())
    dx, dmul, dadd = LN.layer_norm_affine_backward(x, mul, add, dy, 1e-6, groups)
    assert dx is not None and dmul is not None and dadd is not None
    assert (dx.dtype, dmul.shape, dadd.shape) == (dtype, mul.shape, add.shape)
    for got, leaf in zip((dx, dmul, dadd), leaves, strict=True):
        assert leaf.grad is not None
        assert rel_err(got, leaf.grad) <= TOL[dtype]
    only_x = LN.layer_norm_affine_backward(x, mul, add, dy, 1e-6, groups, needs=(True, False, False))
    assert only_x[1] is None and only_x[2] is None and torch.equal(only_x[0], dx)
    no_x = LN.layer_norm_affine_backward(x, mul, add, dy, 1e-6, groups, needs=(False, True, True))
    assert no_x[0] is None and torch.equal(no_x[1], dmul)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "s", "d", "groups", "bm"), LN_CASES)
def test_gated_residual_matches_float64(dtype: torch.dtype, b: int, s: int, d: int, groups: int, bm: int) -> None:
    g = torch.Generator().manual_seed(b * 10 + d)
    x, a, tx, ta = (randn(b, s, d, gen=g, dtype=dtype) for _ in range(4))
    gate, tgate = randn(bm, groups, d, gen=g), randn(bm, groups, d, gen=g)
    ref = lambda x, a, gt: FO._gated_residual_reference(x, a, gt, groups)
    y64, t64 = reference_jvp(ref, (x, a, gate), (tx, ta, tgate))
    assert rel_err(GR.gated_residual(x, a, gate, groups), y64) < TOL[dtype]
    assert rel_err(GR.gated_residual_jvp(x, a, gate, tx, ta, tgate, groups), t64) < TOL[dtype]
    # Each tangent alone (the others None) is its own term.
    _, t64 = reference_jvp(ref, (x, a, gate), (torch.zeros_like(tx), ta, torch.zeros_like(tgate)))
    assert rel_err(GR.gated_residual_jvp(x, a, gate, None, ta, None, groups), t64) < TOL[dtype]
    _, t64 = reference_jvp(ref, (x, a, gate), (torch.zeros_like(tx), torch.zeros_like(ta), tgate))
    assert rel_err(GR.gated_residual_jvp(x, a, gate, None, None, tgate, groups), t64) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "s", "d", "groups", "bm"), [*LN_CASES, (2, 70, 48, 1, 1)])
def test_gated_residual_backward_matches_float64(
    dtype: torch.dtype, b: int, s: int, d: int, groups: int, bm: int
) -> None:
    g = torch.Generator().manual_seed(b * 20 + d)
    x, a, dy = (randn(b, s, d, gen=g, dtype=dtype) for _ in range(3))
    gate = randn(bm, groups, d, gen=g)
    leaves = [t.double().requires_grad_() for t in (x, a, gate)]
    FO._gated_residual_reference(*leaves, groups).backward(dy.double())
    dx, da, dgate = GR.gated_residual_backward(a, gate, dy, groups)
    assert dx is not None and da is not None and dgate is not None
    assert (dx.dtype, da.dtype, dgate.shape) == (dtype, dtype, gate.shape)
    for got, leaf in zip((dx, da, dgate), leaves, strict=True):
        assert leaf.grad is not None
        assert rel_err(got, leaf.grad) <= TOL[dtype]
    assert GR.gated_residual_backward(a, gate, dy, groups, needs=(True, False, False))[1:] == (None, None)
    only_gate = GR.gated_residual_backward(a, gate, dy, groups, needs=(False, False, True))
    assert only_gate[0] is None and only_gate[1] is None and torch.equal(only_gate[2], dgate)


RMS_CASES = [  # (B, S, H, D, per_head, interleaved, rope)
    (2, 5, 3, 10, False, True, True),  # Wan self-attention: norm over all heads, adjacent pairs
    (1, 7, 2, 16, True, False, True),  # Cosmos self-attention: per head, halves
    (2, 3, 4, 6, False, True, False),  # cross-attention: norm only
    (1, 9, 1, 128, True, False, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "s", "h", "d", "per_head", "interleaved", "with_rope"), RMS_CASES)
def test_rms_norm_rope_matches_float64(
    dtype: torch.dtype, b: int, s: int, h: int, d: int, per_head: bool, interleaved: bool, with_rope: bool
) -> None:
    g = torch.Generator().manual_seed(s * 7 + d)
    x, tx = randn(b, s, h, d, gen=g, dtype=dtype, std=2.0), randn(b, s, h, d, gen=g, dtype=dtype)
    w = randn(d if per_head else h * d, gen=g)
    angles = randn(s, 1, d // 2, gen=g, std=3.0)
    cos, sin = (angles.cos(), angles.sin()) if with_rope else (None, None)
    rope = (cos, sin) if with_rope else None

    def ref(x: Tensor) -> Tensor:
        c, sn = (None, None) if not with_rope else (cos.double(), sin.double())  # type: ignore[union-attr]
        return FO._rms_norm_rope_reference(x, w.double(), c, sn, 1e-6, per_head, interleaved)

    y64, t64 = reference_jvp(ref, (x,), (tx,))
    y = RR.rms_norm_rope(x, w, rope, 1e-6, per_head=per_head, interleaved=interleaved)
    ty = RR.rms_norm_rope_jvp(x, tx, w, rope, 1e-6, per_head=per_head, interleaved=interleaved)
    assert y.shape == ty.shape == x.shape
    assert rel_err(y, y64) < TOL[dtype]
    assert rel_err(ty, t64) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("b", "s", "h", "d", "per_head", "interleaved", "with_rope"), [*RMS_CASES, (2, 37, 3, 10, False, True, True)]
)
def test_rms_norm_rope_backward_matches_float64(
    dtype: torch.dtype, b: int, s: int, h: int, d: int, per_head: bool, interleaved: bool, with_rope: bool
) -> None:
    # 2 × 37 rows at 16 rows a program leave a partial last program.
    g = torch.Generator().manual_seed(s * 11 + d)
    x, dy = randn(b, s, h, d, gen=g, dtype=dtype, std=2.0), randn(b, s, h, d, gen=g, dtype=dtype)
    w = randn(d if per_head else h * d, gen=g)
    angles = randn(s, 1, d // 2, gen=g, std=3.0)
    rope = (angles.cos(), angles.sin()) if with_rope else None
    leaves = [x.double().requires_grad_(), w.double().requires_grad_()]
    tables = (None, None) if rope is None else tuple(t.double() for t in rope)
    FO._rms_norm_rope_reference(*leaves, *tables, 1e-6, per_head, interleaved).backward(dy.double())
    opts = {"per_head": per_head, "interleaved": interleaved}
    dx, dw = RR.rms_norm_rope_backward(x, w, rope, dy, 1e-6, **opts)
    assert dx is not None and dw is not None
    assert (dx.dtype, dw.shape, dw.dtype) == (dtype, w.shape, w.dtype)
    for got, leaf in zip((dx, dw), leaves, strict=True):
        assert leaf.grad is not None
        assert rel_err(got, leaf.grad) < TOL[dtype]
    only_w = RR.rms_norm_rope_backward(x, w, rope, dy, 1e-6, **opts, needs=(False, True))
    assert only_w[0] is None and torch.equal(only_w[1], dw)


def test_kernels_name_bad_shapes() -> None:
    x = torch.zeros(2, 6, 8, device=DEVICE)
    with pytest.raises(ValueError, match="equal groups"):
        LN.layer_norm_affine(x, torch.ones(2, 4, 8, device=DEVICE), torch.ones(2, 4, 8, device=DEVICE), 1e-6, 4)
    with pytest.raises(ValueError, match=r"mul must be \(8,\) or \(1 or 2, 3, 8\)"):
        LN.layer_norm_affine(x, torch.ones(3, 3, 8, device=DEVICE), torch.ones(1, 3, 8, device=DEVICE), 1e-6, 3)
    with pytest.raises(ValueError, match="tokens"):
        GR.gated_residual(x[0], x[0], torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match=r"rope tables must hold \(6, 2\)"):
        RR.rms_norm_rope(x.view(2, 6, 2, 4), torch.ones(8, device=DEVICE), (x[0, :5, :2], x[0, :5, :2]), 1e-6,
                         per_head=False, interleaved=True)  # fmt: skip


# --- the autograd ops: dual tensors, the fused pass, backward ----------------------------------------------


@pytest.fixture
def kernels_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the ops to the kernels on this device too (on CPU: Triton's interpreter)."""
    monkeypatch.setattr(FO, "_use_kernels", lambda x: FO._enabled and x.dtype in (torch.float32, torch.bfloat16))


OPS: dict[str, tuple[Callable[..., Tensor], Callable[[torch.Generator], tuple[Tensor, ...]]]] = {
    "modulated_layer_norm": (
        lambda x, m, a: FO.modulated_layer_norm(x, m, a, 1e-6, groups=2),
        lambda g: (randn(2, 6, 24, gen=g), randn(2, 2, 24, gen=g), randn(1, 2, 24, gen=g)),
    ),
    "gated_residual": (
        lambda x, a, gt: FO.gated_residual(x, a, gt, groups=3),
        lambda g: (randn(2, 6, 24, gen=g), randn(2, 6, 24, gen=g), randn(2, 3, 24, gen=g)),
    ),
    "rms_norm_rope": (
        lambda x, w: FO.rms_norm_rope(x, w, ROPE, 1e-6, per_head=False, interleaved=True),
        lambda g: (randn(2, 6, 3, 8, gen=g), randn(24, gen=g)),
    ),
}
_angles = torch.linspace(-3, 3, 6 * 4, dtype=torch.float64).view(6, 1, 4)
ROPE = (_angles.cos().float().to(DEVICE), _angles.sin().float().to(DEVICE))


@pytest.mark.usefixtures("kernels_everywhere")
@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_jvp_and_fused_pass_match_the_reference(name: str) -> None:
    op, make = OPS[name]
    g = torch.Generator().manual_seed(3)
    primals = make(g)
    tangents = tuple(torch.randn_like(p) for p in primals)
    with FO.fused_kernels(False):
        out64, tan64 = jvp(op, [p.double() for p in primals], [t.double() for t in tangents])
        leaves64 = [p.double().requires_grad_() for p in primals]
        weight = torch.randn_like(out64)
        (op(*leaves64) * weight).sum().backward()

    out, tan = jvp(op, list(primals), list(tangents))
    assert rel_err(out, out64) < 1e-5 and rel_err(tan, tan64) < 1e-5
    # A zero tangent gives exactly zero; the tangent is linear in the input tangent.
    _, zero = jvp(op, list(primals), [torch.zeros_like(t) for t in tangents])
    assert torch.equal(zero, torch.zeros_like(zero))
    _, double = jvp(op, list(primals), [2 * t for t in tangents])
    assert rel_err(double, 2 * tan64) < 1e-5

    # Fused pass: one dual forward whose primal keeps its graph; the tangent carries none.
    leaves = [p.clone().requires_grad_() for p in primals]
    with torch.autograd.forward_ad.dual_level():
        dual = op(*(torch.autograd.forward_ad.make_dual(p, t) for p, t in zip(leaves, tangents, strict=True)))
        primal, tangent = torch.autograd.forward_ad.unpack_dual(dual)
        assert tangent is not None and tangent.grad_fn is None
        (primal * weight.float()).sum().backward()
    assert rel_err(tangent, tan64) < 1e-5
    for leaf, ref in zip(leaves, leaves64, strict=True):
        assert leaf.grad is not None and ref.grad is not None
        assert rel_err(leaf.grad, ref.grad) < 1e-5


@pytest.mark.usefixtures("kernels_everywhere")
def test_route_sends_duals_and_graphs_to_the_op_and_inference_to_the_kernel() -> None:
    x, w = torch.randn(1, 4, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    assert FO._route(x, w) == "kernel"
    with torch.no_grad():
        assert FO._route(x, w.requires_grad_()) == "kernel"
    assert FO._route(x, w) == "function"  # records a graph: the autograd op, whose backward is a kernel
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        assert FO._route(dual, w) == "function"
    routes = []
    torch.func.jvp(lambda a: routes.append(FO._route(a, None)) or a, (x,), (x,))
    assert routes == ["function"]
    assert FO._route(x.double(), None) == "reference"


def test_ops_use_the_references_off_cuda() -> None:
    x = torch.randn(1, 4, 8)
    if DEVICE.type == "cpu":
        assert not FO._use_kernels(x)
    with FO.fused_kernels(False):
        assert not FO._use_kernels(x.to(DEVICE))
    assert not FO._use_kernels(x.double().to(DEVICE))


# --- whole networks: kernels switched in vs the reference path ----------------------------------------------


def _network_case(name: str) -> tuple[Any, tuple[Tensor, ...], Callable[..., Tensor]]:
    torch.manual_seed(0)
    net = rr.registry().build("network", name, size="tiny", attention={"use": "math"}).to(DEVICE).eval()
    g = torch.Generator().manual_seed(1)
    if name.startswith("wan"):
        x, t, text = randn(2, 16, 3, 4, 6, gen=g), randn(2, gen=g).abs() * 500, randn(2, 5, net.arch.text_dim, gen=g)
    else:  # video-to-world: one timestep per latent frame, so the modulation has a row per frame
        x, t, text = randn(1, 16, 2, 4, 4, gen=g), randn(1, 2, gen=g).abs(), randn(1, 3, net.arch.text_dim, gen=g)
    return net, (x, t), lambda a, b: net(a, b, text)


@pytest.mark.usefixtures("kernels_everywhere")
@pytest.mark.parametrize("name", ["wan2.1-t2v", "cosmos-predict2-v2w"])
def test_networks_with_kernels_equal_the_reference_path(name: str) -> None:
    net, primals, fn = _network_case(name)
    tangents = [torch.randn_like(p) for p in primals]
    with FO.fused_kernels(False):
        out_ref, tan_ref = jvp(fn, list(primals), tangents)
        fn(*primals).square().mean().backward()
        grads_ref = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
    out, tan = jvp(fn, list(primals), tangents)
    fn(*primals).square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert rel_err(out, out_ref.double()) < 1e-5
    assert rel_err(tan, tan_ref.double()) < 1e-5
    assert max(rel_err(a, b.double()) for a, b in zip(grads, grads_ref, strict=True) if b.norm() > 0) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("d", "heads", "per_head", "interleaved"), [(1536, 12, False, True), (2048, 16, True, False)])
def test_kernels_at_production_widths_on_cuda(d: int, heads: int, per_head: bool, interleaved: bool) -> None:
    """bf16 at Wan2.1-1.3B / Cosmos-2B widths: kernels vs the eager bf16 reference (same roundings)."""
    g = torch.Generator().manual_seed(0)
    b, s = 1, 4096
    x, tx = randn(b, s, d, gen=g, dtype=torch.bfloat16), randn(b, s, d, gen=g, dtype=torch.bfloat16)
    mul, add, tmul, tadd = (randn(b, 1, d, gen=g) for _ in range(4))
    ref = lambda x, m, a: FO._layer_norm_affine_reference(x, m, a, 1e-6, 1)
    y_ref, t_ref = torch.func.jvp(ref, (x, mul, add), (tx, tmul, tadd))
    assert rel_err(LN.layer_norm_affine(x, mul, add, 1e-6), y_ref.double()) < 5e-3
    assert rel_err(LN.layer_norm_affine_jvp(x, tx, mul, tmul, tadd, 1e-6), t_ref.double()) < 5e-3
    q, tq = x.view(b, s, heads, d // heads), tx.view(b, s, heads, d // heads)
    w = randn(d // heads if per_head else d, gen=g)
    angles = randn(s, 1, d // heads // 2, gen=g, std=3.0)
    rope = (angles.cos(), angles.sin())
    ref_r = lambda q: FO._rms_norm_rope_reference(q, w, *rope, 1e-6, per_head, interleaved)
    y_ref, t_ref = torch.func.jvp(ref_r, (q,), (tq,))
    kw = {"per_head": per_head, "interleaved": interleaved}
    assert rel_err(RR.rms_norm_rope(q, w, rope, 1e-6, **kw), y_ref.double()) < 5e-3
    assert rel_err(RR.rms_norm_rope_jvp(q, tq, w, rope, 1e-6, **kw), t_ref.double()) < 5e-3

    # Backward kernels against the eager reference's autograd at the same widths (float64 on bf16 inputs).
    dy = randn(b, s, d, gen=g, dtype=torch.bfloat16)
    leaves = [t.double().requires_grad_() for t in (x, mul, add)]
    FO._layer_norm_affine_reference(*leaves, 1e-6, 1).backward(dy.double())
    for got, leaf in zip(LN.layer_norm_affine_backward(x, mul, add, dy, 1e-6), leaves, strict=True):
        assert rel_err(got, leaf.grad) < 5e-3
    gate = randn(b, 1, d, gen=g)
    leaves = [t.double().requires_grad_() for t in (x, tx, gate)]
    FO._gated_residual_reference(*leaves, 1).backward(dy.double())
    for got, leaf in zip(GR.gated_residual_backward(tx, gate, dy), leaves, strict=True):
        assert rel_err(got, leaf.grad) < 5e-3
    dq = dy.view_as(q)
    leaves = [q.double().requires_grad_(), w.double().requires_grad_()]
    FO._rms_norm_rope_reference(*leaves, *(t.double() for t in rope), 1e-6, per_head, interleaved).backward(dq.double())
    for got, leaf in zip(RR.rms_norm_rope_backward(q, w, rope, dq, 1e-6, **kw), leaves, strict=True):
        assert rel_err(got, leaf.grad) < 1e-2  # the gradient is rounded between rotation and norm
