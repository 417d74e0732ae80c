"""The INT8 (SageAttention-style) attention kernel against its torch reference and against exact attention.

On a CPU-only machine the kernel runs in Triton's interpreter (conftest.py) at small shapes and small tiles;
with CUDA the same tests run compiled, plus the ``gpu`` tests at the Wan2.1 self-attention shape. Two
comparisons: the kernel against :func:`int8_attention_reference` (the same quantisation, float64 softmax),
which must agree to rounding of the softmax and of P; both against exact float64 attention of the unquantised
inputs, which measures the cost of the 8-bit scores.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rcm_kernels import attention_int8 as K

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
#: Kernel vs reference of the same quantisation. bf16 is looser in the interpreter, which rounds fp32 to
#: bf16 by truncation (P is rounded to V's dtype before the PV product).
SAME_QUANTISATION = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
#: Quantised vs exact attention (relative Frobenius error) on unit-normal q, k, v: INT8 scores cost about 1 %.
EXACT = 2.5e-2
#: Small tiles keep the interpreter fast and put several quantisation blocks in every test.
SMALL = K.Int8LaunchConfig(32, 32, 4, 1)


def rel_err(x: Tensor, ref: Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def exact(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q.double() @ k.double().transpose(-2, -1) * scale, dim=-1) @ v.double()


def inputs(
    b: int, h: int, nq: int, nk: int, d: int, dtype: torch.dtype, seed: int, key_offset: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-normal q, k, v rounded to ``dtype``; ``key_offset`` adds a per-channel offset common to all keys."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, nk, d, generator=gen, dtype=torch.float64)
    k = k + key_offset * torch.randn(b, h, 1, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, h, nk, d, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=DEVICE, dtype=dtype) for t in (q, k, v))  # type: ignore[return-value]


CASES = [
    # (B, H, Nq, Nk, D): the two head dims the backend is for, a padded one, tails on both sides, cross-attention.
    (1, 2, 70, 50, 64),
    (2, 1, 33, 97, 128),
    (1, 1, 64, 64, 40),
    (1, 1, 5, 130, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_equals_the_reference_of_the_same_quantisation(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v = inputs(*shape, dtype=dtype, seed=sum(shape), key_offset=2.0)
    got = K.int8_attention(q, k, v, config=SMALL)
    want = K.int8_attention_reference(q, k, v, block_m=SMALL.block_m, block_n=SMALL.block_n)
    assert got.shape == q.shape and got.dtype == dtype
    err = rel_err(got, want)
    assert err <= SAME_QUANTISATION[dtype], f"{shape} {dtype}: {err:.2e}"


@pytest.mark.parametrize("d", [64, 128])
def test_kernel_and_reference_are_close_to_exact_attention(d: int) -> None:
    for seed, offset in ((0, 0.0), (1, 4.0)):
        q, k, v = inputs(1, 2, 90, 110, d, torch.float32, seed, key_offset=offset)
        want = exact(q, k, v)
        ref = K.int8_attention_reference(q, k, v, block_m=SMALL.block_m, block_n=SMALL.block_n)
        got = K.int8_attention(q, k, v, config=SMALL)
        assert rel_err(ref, want) <= EXACT, f"reference, D {d}, key offset {offset}: {rel_err(ref, want):.2e}"
        assert rel_err(got, want) <= EXACT, f"kernel, D {d}, key offset {offset}: {rel_err(got, want):.2e}"
        # The quantisation is not free: an error of zero would mean the scores were not quantised.
        assert rel_err(got, want) > 1e-4


DEFAULT_BLOCK_CASES = [
    # (B, H, Nq, Nk, D): a Wan head; the moving-digits network's self-attention (9x8x8 tokens, heads of 32)
    # and its cross-attention to 8 label tokens, fewer keys than one key block.
    (1, 1, 200, 150, 128),
    (1, 2, 576, 576, 32),
    (2, 2, 576, 8, 32),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", DEFAULT_BLOCK_CASES, ids=lambda s: "x".join(map(str, s)))
def test_the_default_blocks_give_the_same_attention(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v = inputs(*shape, dtype=dtype, seed=7, key_offset=2.0)
    cfg = K.default_config(shape[-1], q.device)
    got = K.int8_attention(q, k, v)
    want = K.int8_attention_reference(q, k, v, block_m=cfg.block_m, block_n=cfg.block_n)
    assert rel_err(got, want) <= SAME_QUANTISATION[dtype], f"{shape} {dtype}: {rel_err(got, want):.2e}"
    assert rel_err(got, exact(q, k, v)) <= EXACT


def test_smoothing_the_keys_removes_the_cost_of_a_common_key_offset() -> None:
    # Keys with a large shared offset (as Wan's have): without smoothing the offset takes most of the INT8 range.
    q, k, v = inputs(1, 2, 64, 96, 64, torch.float32, 3, key_offset=20.0)
    want = exact(q, k, v)
    smooth = rel_err(K.int8_attention(q, k, v, config=SMALL), want)
    raw = rel_err(K.int8_attention(q, k, v, config=SMALL, smooth_k=False), want)
    assert smooth <= EXACT
    assert raw > 3 * smooth, f"smoothed {smooth:.2e}, unsmoothed {raw:.2e}"


def test_strided_bshd_views_and_an_explicit_scale() -> None:
    # Networks pass (B, S, H, D) memory viewed as (B, H, S, D); q, k and v may be slices of one fused tensor.
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 45, 3, 2, 64, generator=gen).to(DEVICE)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    got = K.int8_attention(q, k, v, 0.2, config=SMALL)
    want = K.int8_attention_reference(q, k, v, 0.2, block_m=SMALL.block_m, block_n=SMALL.block_n)
    assert rel_err(got, want) <= SAME_QUANTISATION[torch.float32]
    assert rel_err(got, exact(q, k, v, 0.2)) <= EXACT
    assert got.transpose(1, 2).is_contiguous(), "the output is a (B, H, S, D) view of (B, S, H, D) memory"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bshd_memory_with_nothing_to_pad(dtype: torch.dtype) -> None:
    # The networks' layout, with whole blocks of rows and D = BLOCK_D (the moving-digits self-attention: 576
    # tokens, heads of 32), so that the quantisation pads nothing and must still hand the kernel contiguous
    # blocks: quantised keys that kept the (B, S, H, D) strides made the kernel attend to other tokens' keys.
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 128, 3, 32, generator=gen).to(DEVICE, dtype).transpose(1, 2) for _ in "qkv")
    qq = K.quantize_qk(q, k, SMALL.block_m, SMALL.block_n)
    assert qq.q8.is_contiguous() and qq.k8.is_contiguous()
    same = K.quantize_qk(q.contiguous(), k.contiguous(), SMALL.block_m, SMALL.block_n)
    assert torch.equal(qq.q8, same.q8) and torch.equal(qq.k8, same.k8)
    got = K.int8_attention(q, k, v, config=SMALL)
    want = K.int8_attention_reference(q, k, v, block_m=SMALL.block_m, block_n=SMALL.block_n)
    assert rel_err(got, want) <= SAME_QUANTISATION[dtype], f"{dtype}: {rel_err(got, want):.2e}"


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "dtype", "message"),
    [
        ((1, 1, 8, 8), (1, 1, 8, 8), torch.float32, "head dim must be in"),
        ((1, 1, 8, 512), (1, 1, 8, 512), torch.float32, "head dim must be in"),
        ((1, 1, 8, 64), (1, 2, 8, 64), torch.float32, "incompatible shapes"),
        ((1, 8, 64), (1, 8, 64), torch.float32, r"expected \(B, H, S, D\)"),
        ((1, 1, 8, 64), (1, 1, 8, 32), torch.float32, "incompatible shapes|one head dim"),
        ((1, 1, 8, 64), (1, 1, 0, 64), torch.float32, "zero keys"),
        ((1, 1, 8, 64), (1, 1, 8, 64), torch.float64, "must share one of"),
    ],
)
def test_unsupported_inputs_are_refused(
    q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype: torch.dtype, message: str
) -> None:
    q = torch.zeros(q_shape, dtype=dtype, device=DEVICE)
    k = torch.zeros(k_shape, dtype=dtype, device=DEVICE)
    with pytest.raises((ValueError, TypeError), match=message):
        K.int8_attention(q, k, k.clone())
    with pytest.raises((ValueError, TypeError), match=message):
        K.int8_attention_reference(q, k, k.clone(), block_m=32, block_n=32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wan_self_attention_shape_against_sdpa() -> None:
    # Wan2.1-1.3B at 480p: B1 H12 N32760 D128 bf16. SDPA (flash) is the bf16 baseline the option replaces.
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 12, 32760, 128, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    got = K.int8_attention(q, k, v)
    base = F.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(got).all()
    assert rel_err(got, base) <= EXACT
    # The compiled kernel agrees with the reference of its own quantisation on a slice of the heads.
    cfg = K.default_config(128, q.device)
    qs, ks, vs = (t[:, :1, :4096] for t in (q, k, v))
    want = K.int8_attention_reference(qs, ks, vs, block_m=cfg.block_m, block_n=cfg.block_n, compute=torch.float32)
    assert rel_err(K.int8_attention(qs, ks, vs), want) <= 5e-3


def test_the_reference_under_autocast_computes_as_without_it() -> None:
    # A network sampled under bf16 autocast calls the reference on the CPU: its products stay in `compute`.
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=g) for _ in range(3))
    plain = K.int8_attention_reference(q, k, v, block_m=16, block_n=16, compute=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = K.int8_attention_reference(q, k, v, block_m=16, block_n=16, compute=torch.float32)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)


# -- P·V in FP8 (pv="fp8") -------------------------------------------------------------------------------

#: FP8 P·V against exact attention on unit-normal inputs: e4m3's three mantissa bits cost about 2.5 % for P
#: and as much for V (measured 3.0–3.9 % together, against the INT8 scores' 1 %).
EXACT_FP8 = 5e-2
#: The kernel against the reference of the same quantisation: P is rounded against the running row maximum
#: in the kernel and against the final one in the reference, so the two round different values (1.4–2.2 %).
SAME_FP8 = 3e-2


def test_fp8_pv_defaults_to_its_own_blocks() -> None:
    # FP8 P·V takes 64 query rows and 128 key rows by default, and the kernel quantises with those blocks:
    # 200 keys are two 128-key blocks (a tail), four of the INT8 P·V's 64-key ones.
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert K.default_config(128, cuda, "fp8")[:2] == (64, 128) == K.default_config(128, cpu, "fp8")[:2]
    assert K.default_config(128, cuda)[:2] == (128, 64)
    q, k, v = inputs(1, 1, 130, 200, 64, dtype=torch.float32, seed=11, key_offset=2.0)
    got = K.int8_attention(q, k, v, pv="fp8")
    own = K.int8_attention_reference(q, k, v, block_m=64, block_n=128, pv="fp8")
    other = K.int8_attention_reference(q, k, v, block_m=128, block_n=64, pv="fp8")
    assert rel_err(got, own) <= SAME_FP8
    assert rel_err(got, own) < rel_err(got, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_fp8_pv_kernel_against_its_reference_and_exact_attention(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    q, k, v = inputs(*shape, dtype=dtype, seed=sum(shape) + 1, key_offset=2.0)
    got = K.int8_attention(q, k, v, config=SMALL, pv="fp8")
    want = K.int8_attention_reference(q, k, v, block_m=SMALL.block_m, block_n=SMALL.block_n, pv="fp8")
    assert got.shape == q.shape and got.dtype == dtype
    assert rel_err(got, want) <= SAME_FP8, f"{shape} {dtype}: {rel_err(got, want):.2e}"
    full = exact(q, k, v)
    assert rel_err(want, full) <= EXACT_FP8 and rel_err(got, full) <= EXACT_FP8
    # P·V really is in 8 bits: its error is well above the 16-bit P·V's.
    input_pv = K.int8_attention(q, k, v, config=SMALL)
    assert rel_err(got, full) > 1.5 * rel_err(input_pv, full)


def test_fp8_pv_mode_is_checked() -> None:
    q = torch.zeros(1, 1, 8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="pv must be one of input, fp8"):
        K.int8_attention(q, q, q, pv="fp4")
    with pytest.raises(ValueError, match="pv must be one of input, fp8"):
        K.int8_attention_reference(q, q, q, block_m=32, block_n=32, pv="int8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp8_pv_at_the_wan_shape() -> None:
    if torch.cuda.get_device_capability() < K.FP8_CAPABILITY:
        with pytest.raises(ValueError, match="needs FP8 tensor cores"):
            K.int8_attention(*(torch.zeros(1, 1, 64, 64, device="cuda") for _ in range(3)), pv="fp8")
        return
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 12, 32760, 128, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    got = K.int8_attention(q, k, v, pv="fp8")
    assert torch.isfinite(got).all()
    assert rel_err(got, F.scaled_dot_product_attention(q, k, v)) <= EXACT_FP8
    cfg = K.default_config(128, q.device, "fp8")
    qs, ks, vs = (t[:, :1, :4096] for t in (q, k, v))
    want = K.int8_attention_reference(
        qs, ks, vs, block_m=cfg.block_m, block_n=cfg.block_n, pv="fp8", compute=torch.float32
    )
    assert rel_err(K.int8_attention(qs, ks, vs, pv="fp8"), want) <= SAME_FP8
