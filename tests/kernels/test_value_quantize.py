"""V's FP8 quantisation for the FP8 P·V product: the fused Triton pass against its torch reference, byte for
byte, and the reference against what it promises (per-channel scales, the transposed and padded layout, e4m3's
rounding). On a CPU-only machine the kernels run in Triton's interpreter (conftest.py)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.triton_common import round_to_e4m3
from rcm_kernels.value_quantize import quantize_v_fp8, quantize_v_fp8_reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
E4M3 = torch.float8_e4m3fn


def _bytes(x: Tensor) -> Tensor:
    return x.view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("b", "h", "n", "d", "block_n", "block_d"),
    [(1, 2, 64, 64, 32, 64), (2, 3, 50, 40, 32, 64), (1, 1, 7, 16, 64, 32), (2, 1, 130, 128, 64, 128)],
    ids=["whole blocks", "tails and padded heads", "fewer keys than a block", "Wan head"],
)
def test_the_fused_pass_equals_the_reference(
    b: int, h: int, n: int, d: int, block_n: int, block_d: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(n + d)
    # (B, S, H, D) memory seen as (B, H, S, D), channels of very different sizes, one all zero, a −0.
    memory = torch.randn(b, n, h, d, generator=gen) * torch.logspace(-3, 2, d)
    memory[..., min(3, d - 1)] = 0.0
    memory[0, 0, 0, 0] = -0.0
    v = memory.to(DEVICE, dtype).transpose(1, 2)
    got8, got_scales = quantize_v_fp8(v, block_n, block_d)
    want8, want_scales = quantize_v_fp8_reference(v, block_n, block_d)
    assert got8.shape == want8.shape == (b, h, block_d, triton.cdiv(n, block_n) * block_n)
    assert torch.equal(_bytes(got8), _bytes(want8))
    assert torch.equal(got_scales, want_scales)


def test_the_reference_quantises_per_channel_into_the_transposed_padded_layout() -> None:
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(2, 3, 50, 40, generator=gen) * torch.linspace(0.1, 10.0, 40)
    v[:, :, :, 7] = 0.0  # an all-zero channel: scale 1, zero bytes
    v8, scales = quantize_v_fp8_reference(v, 32, 64)
    assert v8.shape == (2, 3, 64, 64) and v8.dtype == E4M3 and scales.shape == (2, 3, 64)
    assert not _bytes(v8[:, :, :, 50:]).any(), "keys past N are zero"
    assert not _bytes(v8[:, :, 40:]).any(), "channels past D are zero"
    amax = v.abs().amax(dim=2)
    assert torch.equal(scales[:, :, :40], torch.where(amax > 0, amax / 448.0, 1.0))
    assert torch.equal(scales[:, :, 40:], torch.ones(2, 3, 24))
    back = v8[:, :, :40, :50].float().transpose(-2, -1) * scales[:, :, None, :40]
    # Each channel's largest value maps to 448 exactly; e4m3 keeps 3 mantissa bits: within 2⁻⁴ of each value
    # in its normal range, within half the smallest subnormal (2⁻¹⁰ of the scale) below it.
    torch.testing.assert_close(back.abs().amax(dim=2), amax, rtol=1e-6, atol=0)
    assert ((back - v).abs() <= v.abs() / 16 + scales[:, :, None, :40] * 2.0**-10).all()


@triton.jit
def _round_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, round_to_e4m3(tl.load(X + offs)))


def test_rounding_to_e4m3_in_fp32_matches_torchs_cast() -> None:
    # Within ±448: every e4m3 value, the midpoints between neighbours (ties go to the even one), −0, and randoms.
    values = torch.arange(256, dtype=torch.uint8).view(E4M3).float()
    grid = values[torch.isfinite(values)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    randoms = (torch.rand(4096 - len(grid) - len(mids) - 1, generator=torch.Generator().manual_seed(0)) - 0.5) * 896
    x = torch.cat([grid, mids, torch.tensor([-0.0]), randoms]).to(DEVICE)
    y = torch.empty_like(x)
    _round_kernel[(1,)](x, y, 4096)
    assert torch.equal(_bytes(y.to(E4M3)), _bytes(x.to(E4M3))), "the same e4m3 values, signs of zero included"
    assert torch.equal(y.to(E4M3).float(), y), "the results are e4m3 values already"


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected a \(B, H, N, D\)"):
        quantize_v_fp8_reference(torch.zeros(2, 8, 16), 32, 16)
    with pytest.raises(ValueError, match="at least D"):
        quantize_v_fp8(torch.zeros(1, 1, 8, 64, device=DEVICE), 32, 32)
