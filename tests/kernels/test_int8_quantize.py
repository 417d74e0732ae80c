"""The fused per-block INT8 quantisation against its torch reference (bit for bit) and against its definition.

On a CPU-only machine the kernel runs in Triton's interpreter (conftest.py); with CUDA it runs compiled, and the
reference computes its scale the CUDA way, so bit-identity is checked on both.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rcm_kernels import int8_quantize as Q

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLEMENTATIONS = {"fused": Q.quantize_blocks, "torch": Q.quantize_blocks_reference}


def bshd(b: int, s: int, h: int, d: int, dtype: torch.dtype, seed: int, offset: float = 0.0) -> Tensor:
    """(B, H, S, D) view of (B, S, H, D) memory, as the networks hand attention its inputs; rows of varied size."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, h, d, generator=gen) * torch.logspace(-2, 1, s)[None, :, None, None]
    x = x + offset * torch.randn(b, 1, h, d, generator=gen)
    return x.to(DEVICE, dtype).transpose(1, 2)


# (B, S, H, D, block, block_d): a tail block and padded channels, nothing to pad (the layout whose strides
# once leaked through), a head dim of 16 padded to 32, and more rows than one program's block.
SHAPES = [(2, 70, 3, 40, 32, 64), (1, 128, 2, 32, 32, 32), (1, 45, 1, 16, 64, 32), (1, 300, 2, 64, 128, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smoothed"])
def test_fused_is_bit_identical_to_the_reference(shape: tuple[int, ...], dtype: torch.dtype, smooth: bool) -> None:
    b, s, h, d, block, block_d = shape
    x = bshd(b, s, h, d, dtype, seed=s + d, offset=5.0 if smooth else 0.0)
    m = Q.sequence_mean(x) if smooth else None
    got8, got_scales = Q.quantize_blocks(x, block, block_d, m)
    want8, want_scales = Q.quantize_blocks_reference(x, block, block_d, m)
    assert got8.is_contiguous() and got8.shape == want8.shape and got_scales.shape == want_scales.shape
    assert torch.equal(got_scales, want_scales), (got_scales - want_scales).abs().max()
    mismatch = (got8 != want8).sum().item()
    assert mismatch == 0, f"{mismatch} of {got8.numel()} INT8 values differ"


def test_ties_round_to_even_as_torch() -> None:
    # A block whose amax is 127 has the scale 1, so the values are rounded as they are: halves go to even.
    row = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.49, -3.51, 0.0] + [0.0] * 20)
    x = row.to(DEVICE).view(1, 1, 1, 32)
    q8, scales = Q.quantize_blocks(x, 1, 32)
    assert scales.item() == 1.0
    want = torch.round(row).to(torch.int8)
    assert torch.equal(q8.view(-1).cpu(), want), q8.view(-1)[:12]


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_each_block_is_scaled_by_its_amax(name: str) -> None:
    quantize = IMPLEMENTATIONS[name]
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 2, 70, 40, generator=gen) * torch.linspace(0.1, 10, 70)[:, None]).to(DEVICE)
    q8, scales = quantize(x, 32, 64)
    assert q8.dtype == torch.int8 and q8.shape == (1, 2, 96, 64) and scales.shape == (1, 2, 3)
    assert (q8[:, :, 70:] == 0).all() and (q8[..., 40:] == 0).all(), "padding must be zero"
    for i in range(3):
        block = x[:, :, 32 * i : 32 * (i + 1)]
        torch.testing.assert_close(scales[:, :, i], block.abs().amax(dim=(-2, -1)) / 127)
        # Round to nearest: every element within half a step, and each block's amax hits ±127.
        deq = q8[:, :, 32 * i : 32 * i + block.shape[2], :40].float() * scales[:, :, i, None, None]
        assert ((deq - block).abs() <= scales[:, :, i, None, None] / 2 + 1e-6).all()
        assert (q8[:, :, 32 * i : 32 * (i + 1)].abs().amax(dim=(-2, -1)) == 127).all()
    zeros, zero_scales = quantize(torch.zeros(1, 1, 8, 32, device=DEVICE), 32, 32)
    assert (zeros == 0).all() and (zero_scales == 1).all(), "an all-zero block must not divide by zero"


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_subtracting_the_sequence_mean_centres_the_keys(name: str) -> None:
    k = bshd(2, 50, 3, 16, torch.bfloat16, seed=4, offset=5.0)
    mean = Q.sequence_mean(k)
    assert mean.dtype == torch.float32 and mean.shape == (2, 3, 1, 16)
    q8, scales = IMPLEMENTATIONS[name](k, 64, 32, mean)
    deq = q8[:, :, :50, :16].float() * scales[..., None]  # one block: (B, H, 1) scales
    # Centred to within the rounding of 50 values (each at most half a step off).
    assert deq.mean(dim=2).abs().max() <= scales.max() / 2
    torch.testing.assert_close(deq, k.float() - mean, atol=scales.max().item() / 2 + 1e-6, rtol=0)


def test_empty_sequences_give_empty_blocks() -> None:
    q8, scales = Q.quantize_blocks(torch.zeros(1, 2, 0, 32, device=DEVICE), 32, 32)
    assert q8.shape == (1, 2, 0, 32) and scales.shape == (1, 2, 0)


@pytest.mark.parametrize(
    ("shape", "block", "block_d", "subtract", "message"),
    [
        ((2, 8, 32), 32, 32, None, "expected a"),
        ((1, 1, 8, 64), 32, 32, None, "at least D"),
        ((1, 1, 8, 32), 0, 32, None, "must be positive"),
        ((1, 2, 8, 32), 32, 32, (1, 2, 8, 32), "subtract must have shape"),
    ],
)
def test_bad_arguments_are_named(
    shape: tuple[int, ...], block: int, block_d: int, subtract: tuple[int, ...] | None, message: str
) -> None:
    m = None if subtract is None else torch.zeros(subtract, device=DEVICE)
    for quantize in IMPLEMENTATIONS.values():
        with pytest.raises(ValueError, match=message):
            quantize(torch.zeros(shape, device=DEVICE), block, block_d, m)
