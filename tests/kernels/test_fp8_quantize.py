"""The fused per-row FP8 quantisation kernel against ``quantize_rows``, bit for bit, and FP8 linears through it.

On a CPU-only machine the kernel runs in Triton's interpreter (conftest.py). The interpreter's fp32→e4m3
cast is not the hardware's: it rounds ties away from zero (1.0625 becomes 1.125, not 1.0), truncates below
the normal range and does not saturate. So there the kernel writes the clamped fp32 values it would cast
(``out_dtype=torch.float32``), which must equal the reference's values before its cast bit for bit, with the
scales and the padding; the e4m3 bytes themselves are compared where the cast is the hardware's (CUDA), and
in the interpreter only if its cast is found exact. The ``gpu`` tests add the Wan2.1 shapes and
``Fp8Linear`` against its previous path (torch quantisation, a padded copy, a separate bias add).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcm_kernels.fp8_quantize import FP8, FP8_MAX, launch_config, quantize_rows_fp8
from rcm_kernels.triton_common import interpreter_active
from rcm_registry.engine.fp8_linear import Fp8Linear, quantize_rows

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

CASES = [
    # (M, K, max_block): a tail of rows to pad, K not a power of two, exactly 16 rows, one row; chunked rows
    # (max_block below K) with a partial last chunk and with whole chunks only.
    (21, 100, 16384),
    (16, 64, 16384),
    (1, 48, 16384),
    (5, 300, 64),
    (3, 256, 64),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rows(m: int, k: int, dtype: torch.dtype, seed: int) -> Tensor:
    """Normal rows of magnitudes 1e-6 to 1e4 (fp16 to its range), with row 1 all zeros when there is one."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    top = 2.0 if dtype == torch.float16 else 4.0
    x = x * torch.logspace(-6, top, m, dtype=torch.float64)[:, None]
    if m > 1:
        x[1] = 0.0
    return x.to(device=DEVICE, dtype=dtype)


def reference_before_cast(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """quantize_rows' e4m3 values and scales, and the clamped fp32 values its last step casts to e4m3."""
    x8, scale = quantize_rows(x)
    return x8, scale, (x.float() / scale).clamp(-FP8_MAX, FP8_MAX)


def check_padding(values: Tensor, scale: Tensor, m: int, pad_rows_to: int) -> None:
    m_pad = -(-m // pad_rows_to) * pad_rows_to
    assert values.shape[0] == scale.shape[0] == m_pad and scale.shape[1] == 1
    assert (values[m:].view(torch.uint8) == 0).all(), "padding rows must be zero bytes"
    assert (scale[m:] == 1).all(), "padding rows must have the scale 1"


@functools.cache
def interpreter_cast_is_exact() -> bool:
    """Whether the kernel's e4m3 bytes can be compared here: always on CUDA; in Triton's interpreter only if
    its e4m3 cast rounds like the hardware: ties to even (1.0625, 1.1875, 432, and 1.5 steps of the subnormal
    grid), a value below the normal range (−0.75 of a subnormal step), in a row of amax 448 (scale 1)."""
    if not interpreter_active():
        return True
    x = torch.tensor([[FP8_MAX, 1.0625, 1.1875, 432.0, 3 * 2.0**-10, -0.75 * 2.0**-9]])
    got, _ = quantize_rows_fp8(x)
    want, _ = quantize_rows(x)
    return torch.equal(got[:1].view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "max_block"), CASES)
def test_scaled_values_and_scales_are_the_references_bit_for_bit(
    m: int, k: int, max_block: int, dtype: torch.dtype
) -> None:
    x = rows(m, k, dtype, seed=m * k)
    _, want_scale, want = reference_before_cast(x)
    got, scale = quantize_rows_fp8(x, max_block=max_block, out_dtype=torch.float32)
    assert got.dtype == torch.float32 and scale.dtype == torch.float32 and got.shape[1] == k
    assert torch.equal(scale[:m].view(torch.int32), want_scale.view(torch.int32))
    assert torch.equal(got[:m].view(torch.int32), want.view(torch.int32))
    check_padding(got, scale, m, 16)
    if m > 1:
        assert scale[1].item() == 1.0 and (got[1] == 0).all(), "an all-zero row keeps the scale 1"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "max_block"), CASES)
def test_e4m3_bytes_are_the_references(m: int, k: int, max_block: int, dtype: torch.dtype) -> None:
    x = rows(m, k, dtype, seed=m * k + 1)
    want8, want_scale, _ = reference_before_cast(x)
    got8, scale = quantize_rows_fp8(x, max_block=max_block)
    assert got8.dtype == FP8 and got8.shape[1] == k
    assert torch.equal(scale[:m], want_scale)
    check_padding(got8, scale, m, 16)
    if not interpreter_cast_is_exact():
        pytest.skip("Triton's interpreter rounds fp32→e4m3 unlike the hardware; the e4m3 bytes are compared on CUDA")
    assert torch.equal(got8[:m].view(torch.uint8), want8.view(torch.uint8))


def test_every_e4m3_rounding_boundary() -> None:
    # Each e4m3 value, each midpoint between neighbours and the fp32 values either side of it, in a row of
    # amax 448 (scale 1: the cast sees exactly these values), and once more scaled up to a row of amax 2²⁰.
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()
    grid = grid[grid.isfinite()].unique()
    mid = (grid[1:] + grid[:-1]) / 2
    values = torch.cat([grid, mid, mid.nextafter(mid + 1), mid.nextafter(mid - 1)])
    x = torch.stack([values, values * 2.0**20 / FP8_MAX]).to(DEVICE)
    _, want_scale, want = reference_before_cast(x)
    got, scale = quantize_rows_fp8(x, pad_rows_to=1, out_dtype=torch.float32)
    assert torch.equal(scale, want_scale) and torch.equal(got.view(torch.int32), want.view(torch.int32))
    if interpreter_cast_is_exact():
        got8, _ = quantize_rows_fp8(x, pad_rows_to=1)
        assert torch.equal(got8.view(torch.uint8), quantize_rows(x)[0].view(torch.uint8))


# numpy (the interpreter) warns about inf/inf, which is the point here.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_rows_with_nan_or_inf_follow_the_reference() -> None:
    # NaN: the reference's scale is 1 (NaN > 0 is false) and the row is clamped as it is; ±inf: scale inf,
    # NaN where the infinity was and zeros elsewhere. Triton's max and clamp must propagate NaN to agree.
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5)) * 1000
    x[0, 7] = float("nan")
    x[1, 3] = float("inf")
    x[2, 9] = -float("inf")
    x = x.to(DEVICE)
    _, want_scale, want = reference_before_cast(x)
    got, scale = quantize_rows_fp8(x, out_dtype=torch.float32)
    torch.testing.assert_close(scale[:3], want_scale, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got[:3], want, rtol=0, atol=0, equal_nan=True)
    if interpreter_cast_is_exact():
        got8, _ = quantize_rows_fp8(x)
        assert torch.equal(got8[:3].float().isnan(), want.isnan())


def test_strided_rows_and_other_padding() -> None:
    # Rows whose values are strided (a transpose) are copied first; a row stride alone (a column slice) is not.
    x = rows(24, 40, torch.bfloat16, seed=7)
    for view in (x.T.contiguous().T, x[:, 8:]):
        _, want_scale, want = reference_before_cast(view)
        got, scale = quantize_rows_fp8(view, pad_rows_to=32, out_dtype=torch.float32)
        assert torch.equal(got[:24].view(torch.int32), want.view(torch.int32))
        assert torch.equal(scale[:24], want_scale)
        check_padding(got, scale, 24, 32)
    unpadded, scale = quantize_rows_fp8(x, pad_rows_to=1)
    assert unpadded.shape == (24, 40) and scale.shape == (24, 1)
    empty, empty_scale = quantize_rows_fp8(x[:0])
    assert empty.shape == (0, 40) and empty_scale.shape == (0, 1)


def test_launch_config_and_refused_inputs() -> None:
    assert launch_config(1536) == {"BLOCK": 1024, "CHUNKED": True, "num_warps": 4}
    assert launch_config(1000) == {"BLOCK": 1024, "CHUNKED": False, "num_warps": 4}
    assert launch_config(8960, max_block=16384) == {"BLOCK": 16384, "CHUNKED": False, "num_warps": 16}
    assert launch_config(20000, max_block=16384) == {"BLOCK": 16384, "CHUNKED": True, "num_warps": 16}
    assert launch_config(300, max_block=64) == {"BLOCK": 64, "CHUNKED": True, "num_warps": 1}
    x = torch.zeros(4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_fp8(x[None])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        quantize_rows_fp8(x.double())
    with pytest.raises(TypeError, match="out_dtype"):
        quantize_rows_fp8(x, out_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pad_rows_to"):
        quantize_rows_fp8(x, pad_rows_to=0)
    with pytest.raises(ValueError, match="zero features"):
        quantize_rows_fp8(x[:, :0])
    with pytest.raises(ValueError, match="power of two"):
        quantize_rows_fp8(x, max_block=48)


def _previous_fp8_linear(layer: Fp8Linear, x: Tensor) -> Tensor:
    """Fp8Linear's CUDA path before the kernel: quantize_rows, a padded copy, _scaled_mm, a separate bias add."""
    rows_ = x.reshape(-1, layer.in_features)
    x8, scale = quantize_rows(rows_)
    m, pad = rows_.shape[0], -rows_.shape[0] % 16
    x8 = F.pad(x8.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
    scale = F.pad(scale, (0, 0, 0, pad), value=1.0)
    y = torch._scaled_mm(
        x8, layer.weight_fp8.T, scale_a=scale, scale_b=layer.weight_scale.view(1, -1), out_dtype=torch.bfloat16
    )[:m].to(x.dtype)
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("k", [1536, 8960])
def test_wan_shapes_bit_for_bit_on_cuda(k: int) -> None:
    # Wan2.1-1.3B at 480p: 32760 tokens (not a multiple of 16) of width 1536 or the FFN's 8960, bf16.
    x = torch.randn(32760, k, device="cuda") * torch.logspace(-3, 3, 32760, device="cuda")[:, None]
    x = x.to(torch.bfloat16)
    want8, want_scale = quantize_rows(x)
    for max_block in (16384, 1024):  # one block, and the chunked path
        got8, scale = quantize_rows_fp8(x, max_block=max_block)
        assert torch.equal(got8[:32760].view(torch.uint8), want8.view(torch.uint8))
        assert torch.equal(scale[:32760], want_scale)
        check_padding(got8, scale, 32760, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_with_the_kernel_equals_its_previous_path(bias: bool) -> None:
    from rcm_registry.engine.fp8_linear import scaled_mm_possible

    torch.manual_seed(0)
    layer = Fp8Linear.from_linear(nn.Linear(1536, 8960, bias=bias).cuda().to(torch.bfloat16))
    x = torch.randn(2, 500, 1536, device="cuda", dtype=torch.bfloat16)  # 1000 tokens: 8 rows of padding
    assert scaled_mm_possible(x)
    with torch.no_grad():
        got = layer(x)
        want = _previous_fp8_linear(layer, x)
    assert got.shape == want.shape == (2, 500, 8960) and got.dtype == torch.bfloat16
    if not bias:
        # The same e4m3 operands and scales into the same product.
        assert torch.equal(got, want)
        return
    # The epilogue adds the bias to the fp32 sum before the one bf16 rounding; before, the sum was rounded, the
    # bias added and the result rounded again: apart by at most those roundings (2⁻⁸ relative each).
    b = layer.bias.float()
    bound = 2.0**-8 * (3 * want.float().abs() + b.abs()) * 1.01 + 1e-30
    assert ((got.float() - want.float()).abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("m", "k", "max_block"), [(21, 100, 16384), (5, 300, 64)])
def test_gelu_prologue_quantises_the_gelu_of_each_row(m: int, k: int, max_block: int, dtype: torch.dtype) -> None:
    # The reference: GELU's tanh form in float64, rounded to x's dtype as the unfused layer stores it, then
    # quantize_rows. Written as x·sigmoid(2u), its exact equal, since 0.5·x·(1 + tanh u) cancels to zero in
    # the negative tail even in float64 (F.gelu's GELU(−8) is −0.0, not −3e-21). The kernel computes it in
    # fp32: for bf16 and fp16 the rounding to x's dtype hides that but for the rare value next to a rounding
    # boundary (one unit of x's dtype, and the scale with it when that value is a row's amax); for fp32 the
    # values are within a few fp32 units.
    gen = torch.Generator().manual_seed(m + k)
    x = (3.0 * torch.randn(m, k, generator=gen)).to(device=DEVICE, dtype=dtype)
    x64 = x.double()
    hidden = (x64 * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3))).to(dtype)
    torch.testing.assert_close(hidden, F.gelu(x64, approximate="tanh").to(dtype), rtol=0, atol=1e-6)
    _, want_scale, want = reference_before_cast(hidden)
    got, scale = quantize_rows_fp8(x, max_block=max_block, out_dtype=torch.float32, gelu=True)
    unit = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-21}[dtype]
    torch.testing.assert_close(scale[:m], want_scale, rtol=unit, atol=0)
    torch.testing.assert_close(got[:m], want, rtol=2 * unit, atol=2 * unit * FP8_MAX)
    if dtype != torch.float32:
        assert (got[:m] == want).float().mean() > 0.99  # the same values nearly everywhere, not merely close
    check_padding(got, scale, m, 16)
    # GELU is not the identity: without the prologue the kernel quantises x itself.
    plain, _ = quantize_rows_fp8(x, max_block=max_block, out_dtype=torch.float32)
    assert not torch.allclose(plain[:m], got[:m])
