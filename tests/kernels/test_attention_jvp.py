"""The fused FlashAttention-2 JVP kernel and its backward against float64 references.

On a CPU-only machine these run in Triton's interpreter at small shapes (conftest.py); with CUDA
the same tests run compiled, plus the ``gpu`` tests at the Wan2.1 shapes. The reference is always
float64 ``torch.func.jvp`` / autograd of the plain-torch math attention, evaluated on the inputs
after rounding to the kernel's dtype, so the tolerance measures the kernel, not input rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rcm_kernels import attention_jvp as K
from rcm_kernels.attention_backward import BackwardConfig, attention_backward

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Relative (Frobenius) error bounds vs float64. bf16 on CPU is looser than on the GPU because the
# interpreter converts fp32 to bf16 by truncation, not round-to-nearest.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def randn(shape: tuple[int, ...], gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(DEVICE)


def inputs(
    b: int, h: int, nq: int, nk: int, d: int, dtype: torch.dtype, seed: int, std: float = 1.0
) -> list[torch.Tensor]:
    """q, k, v, tq, tk, tv of a fresh generator, already rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, h, nq, d), (b, h, nk, d), (b, h, nk, d)] * 2
    stds = [std, std, 1.0, 1.0, 1.0, 1.0]
    return [randn(s, gen, sd).to(dtype) for s, sd in zip(shapes, stds, strict=True)]


def reference_jvp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tq: torch.Tensor,
    tk: torch.Tensor | None,
    tv: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    primals = tuple(t.double() for t in (q, k, v))
    tangents = tuple(
        torch.zeros_like(p) if t is None else t.double() for t, p in zip((tq, tk, tv), primals, strict=True)
    )
    return torch.func.jvp(math_attention, primals, tangents)


def poisoned(q: torch.Tensor, with_tangent: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Output buffers full of NaN in the (B, S, H, D) layout, so any element left unwritten shows."""
    b, h, n, d = q.shape
    o = torch.full((b, n, h, d), float("nan"), dtype=q.dtype, device=q.device).transpose(1, 2)
    to = torch.full_like(o, float("nan")) if with_tangent else None
    lse = torch.full((b, h, n), float("nan"), dtype=torch.float32, device=q.device)
    return o, to, lse


CASES = [
    # (B, H, Nq, Nk, D): odd lengths, cross-attention both ways, padded and unpadded head dims.
    (1, 2, 1000, 15, 64),
    (1, 1, 515, 999, 32),
    (2, 1, 77, 130, 16),
    (1, 1, 129, 65, 128),
    (1, 2, 33, 47, 40),
    (1, 1, 70, 33, 256),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_jvp_matches_float64(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v, tq, tk, tv = inputs(*shape, dtype, seed=hash(shape) % 1000)
    out = poisoned(q)
    o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, out=out)
    assert o is out[0] and to is out[1]
    assert torch.isfinite(o).all() and torch.isfinite(to).all() and torch.isfinite(lse).all()
    o_ref, to_ref = reference_jvp(q, k, v, tq, tk, tv)
    assert rel_err(o, o_ref) <= TOL[dtype]
    assert rel_err(to, to_ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 2, 1000, 15, 64), (1, 1, 300, 77, 128)], ids=lambda s: "x".join(map(str, s)))
def test_fast_path_matches_float64(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v, tq, _, _ = inputs(*shape, dtype, seed=7)
    out = poisoned(q)
    o, to, _ = K.attention_jvp_forward(q, k, v, tq, None, None, out=out)
    o_ref, to_ref = reference_jvp(q, k, v, tq, None, None)
    assert rel_err(o, o_ref) <= TOL[dtype]
    assert rel_err(to, to_ref) <= TOL[dtype]


def test_fast_path_equals_general_path_with_zero_tangents() -> None:
    q, k, v, tq, tk, tv = inputs(1, 2, 200, 70, 64, torch.float32, seed=11)
    _, fast, _ = K.attention_jvp_forward(q, k, v, tq, None, None)
    _, general, _ = K.attention_jvp_forward(q, k, v, tq, torch.zeros_like(tk), torch.zeros_like(tv))
    torch.testing.assert_close(fast, general, rtol=0, atol=0)
    # And the two paths really differ when tk, tv are not zero.
    _, full, _ = K.attention_jvp_forward(q, k, v, tq, tk, tv)
    assert rel_err(full, fast.double()) > 1e-2


def test_lse_equals_logsumexp() -> None:
    q, k, v, *_ = inputs(2, 2, 100, 150, 32, torch.float32, seed=12)
    scale = 0.3
    _, _, lse = K.attention_jvp_forward(q, k, v, None, None, None, scale=scale, out=poisoned(q, with_tangent=False))
    ref = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) * scale, dim=-1)
    torch.testing.assert_close(lse.double(), ref, rtol=1e-6, atol=1e-5)


def test_zero_tangent_gives_exactly_zero() -> None:
    q, k, v, *_ = inputs(1, 2, 130, 65, 64, torch.bfloat16, seed=13)
    zeros = [torch.zeros_like(t) for t in (q, k, v)]
    _, to, _ = K.attention_jvp_forward(q, k, v, *zeros, out=poisoned(q))
    assert to is not None and (to == 0).all()
    _, to_fast, _ = K.attention_jvp_forward(q, k, v, zeros[0], None, None, out=poisoned(q))
    assert to_fast is not None and (to_fast == 0).all()


def test_tangent_is_linear() -> None:
    q, k, v, t1q, t1k, t1v = inputs(1, 2, 90, 50, 32, torch.float32, seed=14)
    _, _, _, t2q, t2k, t2v = inputs(1, 2, 90, 50, 32, torch.float32, seed=15)
    a, b = 0.75, -2.5
    _, to1, _ = K.attention_jvp_forward(q, k, v, t1q, t1k, t1v)
    _, to2, _ = K.attention_jvp_forward(q, k, v, t2q, t2k, t2v)
    _, to12, _ = K.attention_jvp_forward(q, k, v, a * t1q + b * t2q, a * t1k + b * t2k, a * t1v + b * t2v)
    combo = a * to1.double() + b * to2.double()
    assert rel_err(to12, combo) <= 1e-5


def test_tangent_matches_float64_central_difference() -> None:
    q, k, v, tq, tk, tv = inputs(1, 2, 70, 45, 32, torch.float32, seed=16)
    _, to, _ = K.attention_jvp_forward(q, k, v, tq, tk, tv)
    h = 1e-5
    qd, kd, vd, tqd, tkd, tvd = (t.double() for t in (q, k, v, tq, tk, tv))
    plus = math_attention(qd + h * tqd, kd + h * tkd, vd + h * tvd)
    minus = math_attention(qd - h * tqd, kd - h * tkd, vd - h * tvd)
    assert rel_err(to, (plus - minus) / (2 * h)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_logits_stay_finite(dtype: torch.dtype) -> None:
    # q, k with std 4 give scores with std 16·√D/√D·... far beyond exp's fp32 range without the max shift.
    q, k, v, tq, tk, tv = inputs(1, 2, 150, 97, 64, dtype, seed=17, std=4.0)
    o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, out=poisoned(q))
    assert torch.isfinite(o).all() and torch.isfinite(to).all() and torch.isfinite(lse).all()
    o_ref, to_ref = reference_jvp(q, k, v, tq, tk, tv)
    assert rel_err(o, o_ref) <= TOL[dtype]
    # Sharp softmax: the tangent is dominated by a few large score tangents; allow fp32 rounding of those.
    assert rel_err(to, to_ref) <= 10 * TOL[dtype]


def test_strided_bshd_views_and_fused_qkv() -> None:
    gen = torch.Generator().manual_seed(18)
    b, nq, nk, h, d = 2, 57, 41, 3, 32
    qkv = randn((b, nq, 3, h, d), gen).float()  # a fused projection, sliced: non-dense views
    kv = randn((b, nk, 2, h, d), gen).float()
    q = qkv[:, :, 0].transpose(1, 2)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    tq = randn((b, nq, h, d), gen).float().transpose(1, 2)
    tk = randn((b, h, nk, d), gen).float()  # (B, H, S, D) contiguous mixed with views
    tv = randn((b, nk, h, d), gen).float().transpose(1, 2)
    assert not q.is_contiguous()
    o, to = K.attention_jvp(q, k, v, tq, tk, tv)
    o_ref, to_ref = reference_jvp(q, k, v, tq, tk, tv)
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(to, to_ref) <= 1e-5
    assert o.transpose(1, 2).is_contiguous()  # (B, S, H, D) memory: reshapes to (B, S, H·D) for free


def test_custom_scale() -> None:
    q, k, v, tq, tk, tv = inputs(1, 1, 40, 60, 16, torch.float32, seed=19)
    o, to = K.attention_jvp(q, k, v, tq, tk, tv, scale=0.05)
    o_ref, to_ref = torch.func.jvp(
        lambda a, b, c: math_attention(a, b, c, scale=0.05),
        tuple(t.double() for t in (q, k, v)),
        tuple(t.double() for t in (tq, tk, tv)),
    )
    assert rel_err(o, o_ref) <= 1e-5 and rel_err(to, to_ref) <= 1e-5


def test_lazy_and_every_tile_rescaling_agree() -> None:
    # Keys scaled up along the sequence make the row max grow from tile to tile, by less than the
    # threshold on some tiles and more on others, so both branches of the lazy rescale run.
    q, k, v, tq, tk, tv = inputs(1, 2, 70, 200, 32, torch.float32, seed=26)
    ramp = torch.linspace(0.2, 6.0, 200, dtype=torch.float64, device=DEVICE).to(k.dtype)[:, None]
    k, tk = k * ramp, tk * ramp
    o_ref, to_ref = reference_jvp(q, k, v, tq, tk, tv)
    results = {}
    for threshold in (0.0, 1.0, 8.0):
        cfg = K.LaunchConfig(64, 16, 4, 1, rescale_threshold=threshold)
        o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg, out=poisoned(q))
        assert rel_err(o, o_ref) <= 1e-5 and rel_err(to, to_ref) <= 1e-5
        results[threshold] = lse
    ref_lse = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) / math.sqrt(32), dim=-1)
    for lse in results.values():
        torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


def test_tangent_written_over_query_tangent() -> None:
    q, k, v, tq, tk, tv = inputs(1, 2, 150, 90, 64, torch.bfloat16, seed=27)
    expected = K.attention_jvp_forward(q, k, v, tq, tk, tv)[1]
    work = tq.clone()
    o, lse = poisoned(q, with_tangent=False)[0::2]
    _, to, _ = K.attention_jvp_forward(q, k, v, work, tk, tv, out=(o, work, lse))
    assert to is work
    torch.testing.assert_close(to, expected, rtol=0, atol=0)
    # Sharing memory other than as the identical view is refused: rows could be overwritten before read.
    shifted = tq.clone()
    n = q.shape[2] - 1
    out = (o[:, :, :n], shifted[:, :, :n], torch.empty_like(lse[..., :n]))
    with pytest.raises(ValueError, match="must not otherwise share"):
        K.attention_jvp_forward(q[:, :, 1:], k, v, shifted[:, :, 1:], tk, tv, out=out)


BACKWARD_VARIANTS = [
    pytest.param(None, id="default"),
    pytest.param(BackwardConfig(64, 32, 64, 32, 4, 2, atomic_dq=False), id="two-kernels"),
    pytest.param(BackwardConfig(64, 32, 0, 0, 4, 2, tma_dq=False), id="atomic-dq"),
    # Bulk tensor reduce where the GPU has it (per-element atomics in the interpreter).
    pytest.param(BackwardConfig(64, 32, 0, 0, 4, 2), id="atomic-dq-tma"),
]


@pytest.mark.parametrize("config", BACKWARD_VARIANTS)
def test_backward_variants_match_float64(config: BackwardConfig | None) -> None:
    # Odd lengths on both sides: tail query tiles (masked atomics) and tail key tiles.
    b, h, nq, nk, d = 2, 2, 133, 77, 64
    q, k, v, *_ = inputs(b, h, nq, nk, d, torch.float32, seed=28)
    do = randn((b, h, nq, d), torch.Generator().manual_seed(29)).float()
    o, _, lse = K.attention_jvp_forward(q, k, v)
    grads = attention_backward(q, k, v, o, lse, do, config=config)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*leaves), leaves, do.double())
    for g, r in zip(grads, ref, strict=True):
        assert torch.isfinite(g).all() and rel_err(g, r) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tangent", ["general", "fast", "none"])
def test_gradients_match_float64_autograd(dtype: torch.dtype, tangent: str) -> None:
    b, h, nq, nk, d = 2, 2, 83, 130, 32
    q, k, v, tq, tk, tv = inputs(b, h, nq, nk, d, dtype, seed=20)
    do = randn((b, h, nq, d), torch.Generator().manual_seed(21)).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    if tangent == "general":
        o, to = K.attention_jvp(*leaves, tq, tk, tv)
        assert not to.requires_grad
    elif tangent == "fast":
        o, to = K.attention_jvp(*leaves, tq, None, None)
        assert not to.requires_grad
    else:
        o = K.attention(*leaves)
    grads = torch.autograd.grad(o, leaves, do)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*ref_leaves), ref_leaves, do.double())
    for g, r in zip(grads, ref, strict=True):
        assert g.dtype == dtype and g.shape == r.shape
        assert rel_err(g, r) <= TOL[dtype]


DESCRIPTOR_VARIANTS = pytest.mark.parametrize(
    "descriptors",
    [
        {"tma": True},
        {"tma": True, "device_descriptors": True},
        {"tma": True, "device_descriptors": True, "warp_specialize": True},
    ],
    ids=["host", "in-kernel", "in-kernel-warp-specialised"],
)


@pytest.mark.parametrize("tangent", ["general", "fast", "none"])
@DESCRIPTOR_VARIANTS
def test_descriptor_loads_match_pointer_loads(tangent: str, descriptors: dict[str, bool]) -> None:
    # Small enough for the interpreter, which emulates descriptors on CPU tensors: both key lengths
    # leave a tail tile (the copy engine's zero fill), and (B, S, H, D) memory viewed as (B, H, S, D)
    # exercises the descriptors' strides.
    q, k, v, tq, tk, tv = (
        t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(2, 2, 70, 45, 32, torch.float32, seed=32)
    )
    tq = tq if tangent != "none" else None
    tk, tv = (tk, tv) if tangent == "general" else (None, None)
    assert K.tma_loads_possible(q, (k, v, tk, tv)) or DEVICE.type == "cuda"
    if not K.tma_loads_possible(q, (k, v, tk, tv)):
        pytest.skip("tensor-descriptor loads need compute capability 9.0+")
    pointer_cfg = K.LaunchConfig(32, 16, 4, 1, rescale_threshold=0.0)
    cfg = pointer_cfg._replace(**descriptors)
    o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg, out=poisoned(q, tq is not None))
    o_ref, to_ref, lse_ref = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=pointer_cfg)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(o, o_ref, rtol=1e-6, atol=1e-6)
    if tq is None:
        assert to is None
        return
    assert to is not None
    torch.testing.assert_close(to, to_ref, rtol=1e-6, atol=1e-6)
    o64, to64 = reference_jvp(q, k, v, tq, tk, tv)
    assert rel_err(o, o64) <= TOL[torch.float32] and rel_err(to, to64) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_head_dim_256_forward_and_gradients(dtype: torch.dtype) -> None:
    # The widest head dim takes its own, smaller tiles (shared memory) in the forward and the backward.
    b, h, nq, nk, d = 1, 2, 70, 97, 256
    q, k, v, tq, tk, tv = inputs(b, h, nq, nk, d, dtype, seed=30)
    do = randn((b, h, nq, d), torch.Generator().manual_seed(31)).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o, to = K.attention_jvp(*leaves, tq, tk, tv)
    o_ref, to_ref = reference_jvp(q, k, v, tq, tk, tv)
    assert rel_err(o, o_ref) <= TOL[dtype] and rel_err(to, to_ref) <= TOL[dtype]
    grads = torch.autograd.grad(o, leaves, do)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*ref_leaves), ref_leaves, do.double())
    for g, r in zip(grads, ref, strict=True):
        assert rel_err(g, r) <= TOL[dtype]


def test_backward_writes_every_element_and_d_not_power_of_two() -> None:
    q, k, v, *_ = inputs(2, 1, 61, 33, 40, torch.float32, seed=22)
    o, _, lse = K.attention_jvp_forward(q, k, v)
    do = torch.ones_like(o)
    dq, dk, dv = attention_backward(q, k, v, o, lse, do)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*leaves), leaves, do.double())
    for g, r in zip((dq, dk, dv), ref, strict=True):
        assert torch.isfinite(g).all() and rel_err(g, r) <= 1e-5


def test_input_checks() -> None:
    q = torch.zeros(1, 1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="head dim"):
        K.attention_jvp_forward(q, q, q)
    q = torch.zeros(1, 1, 4, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float16, bfloat16, float32"):
        K.attention_jvp_forward(q, q, q)
    q = torch.zeros(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="tq has shape"):
        K.attention_jvp_forward(q, q, q, torch.zeros(1, 1, 5, 16, device=DEVICE))


WAN_SHAPES = [
    # Wan2.1-1.3B at 480p: 12 heads of 128, 32760 video tokens; cross-attention to 512 text tokens.
    pytest.param((1, 12, 32760, 32760, 128), id="self"),
    pytest.param((1, 12, 32760, 512, 128), id="cross-fast-path"),
]


def _chunked_reference_error(
    q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor | None, tv: Tensor | None, o: Tensor, to: Tensor
) -> tuple[float, float]:
    """Relative errors of (o, to) vs float64 torch.func.jvp, a head and a query chunk at a time.

    Query rows are independent, so the chunked reference is exact while its (chunk, Nk) float64
    scores stay within a few GiB.
    """
    sums = torch.zeros(4, dtype=torch.float64, device=q.device)
    for h in range(q.shape[1]):
        kh, vh = k[:, h].double(), v[:, h].double()
        tkh = torch.zeros_like(kh) if tk is None else tk[:, h].double()
        tvh = torch.zeros_like(vh) if tv is None else tv[:, h].double()
        for start in range(0, q.shape[2], 4096):
            rows = slice(start, start + 4096)
            o_ref, to_ref = torch.func.jvp(
                math_attention, (q[:, h, rows].double(), kh, vh), (tq[:, h, rows].double(), tkh, tvh)
            )
            sums += torch.stack(
                [
                    (o[:, h, rows].double() - o_ref).square().sum(),
                    o_ref.square().sum(),
                    (to[:, h, rows].double() - to_ref).square().sum(),
                    to_ref.square().sum(),
                ]
            )
    return (sums[0] / sums[1]).sqrt().item(), (sums[2] / sums[3]).sqrt().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", WAN_SHAPES)
def test_wan_shapes_bf16_on_gpu(shape: tuple[int, int, int, int, int]) -> None:
    b, h, nq, nk, d = shape
    gen = torch.Generator(device="cuda").manual_seed(23)

    def bshd(n: int) -> Tensor:  # (B, S, H, D) memory viewed as (B, H, S, D), as the network calls it
        return torch.randn((b, n, h, d), generator=gen, device="cuda", dtype=torch.bfloat16).transpose(1, 2)

    q, k, v, tq = bshd(nq), bshd(nk), bshd(nk), bshd(nq)
    tk, tv = (None, None) if nk != nq else (bshd(nk), bshd(nk))
    o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, out=poisoned(q))
    assert to is not None
    assert torch.isfinite(o).all() and torch.isfinite(to).all() and torch.isfinite(lse).all()
    err_o, err_to = _chunked_reference_error(q, k, v, tq, tk, tv, o, to)
    assert err_o <= 5e-3, err_o
    assert err_to <= 5e-3, err_to


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("atomic_dq", [True, False], ids=["atomic-dq", "two-kernels"])
def test_gradients_bf16_on_gpu_long_sequence(atomic_dq: bool) -> None:
    b, h, nq, nk, d = 2, 2, 4099, 3001, 128
    q, k, v, tq, tk, tv = inputs(b, h, nq, nk, d, torch.bfloat16, seed=24)
    do = randn((b, h, nq, d), torch.Generator().manual_seed(25)).to(torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o, _, lse = K.attention_jvp_forward(*leaves, tq, tk, tv)
    # The default for these lengths is the atomic-dQ kernel (bulk reduce on Hopper); check both forms.
    cfg = None if atomic_dq else BackwardConfig(128, 32, 128, 32, 8, 3, atomic_dq=False)
    grads = attention_backward(*leaves, o, lse, do, config=cfg)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(math_attention(*ref_leaves), ref_leaves, do.double())
    for g, r in zip(grads, ref, strict=True):
        assert rel_err(g, r) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tangent", ["general", "fast", "none"])
@DESCRIPTOR_VARIANTS
def test_descriptor_loads_match_float64_on_gpu(tangent: str, descriptors: dict[str, bool]) -> None:
    # Key lengths off the tile size exercise the copy engine's zero fill of the tail tile; (B, S, H, D)
    # memory viewed as (B, H, S, D) exercises the descriptor's strides.
    b, h, nq, nk, d = 2, 3, 1000, 999, 128
    gen = torch.Generator(device="cuda").manual_seed(26)

    def bshd(n: int) -> Tensor:
        return torch.randn((b, n, h, d), generator=gen, device="cuda", dtype=torch.bfloat16).transpose(1, 2)

    q, k, v = bshd(nq), bshd(nk), bshd(nk)
    tq = bshd(nq) if tangent != "none" else None
    tk, tv = (bshd(nk), bshd(nk)) if tangent == "general" else (None, None)
    if not K.tma_loads_possible(q, (k, v, tk, tv)):
        pytest.skip("tensor-descriptor loads need compute capability 9.0+")
    base = K.default_config(d, q.dtype, tk is not None, q.device, has_tangent=tq is not None)
    pointer_cfg = base._replace(tma=False, device_descriptors=False, warp_specialize=False)
    cfg = pointer_cfg._replace(rescale_threshold=0.0, **descriptors)
    o, to, lse = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=cfg, out=poisoned(q, tq is not None))
    o_ref, to_ref, lse_ref = K.attention_jvp_forward(q, k, v, tq, tk, tv, config=pointer_cfg)
    assert rel_err(lse, lse_ref) <= 1e-6
    assert rel_err(o, o_ref) <= 1e-3
    if tq is None:
        assert to is None
        return
    assert to is not None and to_ref is not None
    assert rel_err(to, to_ref) <= 1e-3
    err_o, err_to = _chunked_reference_error(q, k, v, tq, tk, tv, o, to)
    assert err_o <= 5e-3, err_o
    assert err_to <= 5e-3, err_to
