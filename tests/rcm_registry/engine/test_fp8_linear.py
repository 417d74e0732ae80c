"""FP8 (e4m3) linear layers: the quantisation's error bounds, the reference path against float64, the layer under
autocast, the swap on a tiny Wan network, and (``gpu``) ``torch._scaled_mm`` against the reference path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rcm_registry as rr
from rcm_registry.engine.fp8_linear import (
    FP8,
    FP8_MAX,
    Fp8GeluMlp,
    Fp8Linear,
    fp8_linear_blocks,
    is_gelu_mlp,
    quantize_rows,
)
from rcm_registry.testing.fixtures import rel_err

#: e4m3 has 3 mantissa bits: round-to-nearest is within 2⁻⁴ of a normal value, and within half the smallest
#: subnormal step (2⁻¹⁰ of the scale) below the normal range (|x|/scale < 2⁻⁶).
RELATIVE_STEP, SUBNORMAL_HALF_STEP = 2.0**-4, 2.0**-10


def _linear(n_in: int, n_out: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias).double()
    # Channels of very different size, as trained weights have: per-channel scales are what keeps the small ones.
    with torch.no_grad():
        layer.weight.mul_(torch.logspace(-2, 1, n_out, dtype=torch.float64)[:, None])
    return layer


def test_quantize_rows_is_within_half_an_e4m3_step() -> None:
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.logspace(-3, 2, 40, dtype=torch.float64)[:, None]
    x8, scale = quantize_rows(x)
    assert x8.dtype == FP8 and scale.shape == (40, 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.double(), x.abs().amax(-1, keepdim=True) / FP8_MAX, rtol=1e-6, atol=0)
    deq = x8.double() * scale.double()
    bound = torch.maximum(RELATIVE_STEP * x.abs(), SUBNORMAL_HALF_STEP * scale.double()) * (1 + 1e-6)
    assert ((deq - x).abs() <= bound).all()
    # Every row's amax is the largest e4m3 value, so the whole range is used.
    assert torch.equal(x8.double().abs().amax(-1), torch.full((40,), FP8_MAX, dtype=torch.float64))
    zero8, zero_scale = quantize_rows(torch.zeros(2, 16))
    assert (zero8.float() == 0).all() and (zero_scale == 1).all()


@pytest.mark.parametrize("bias", [True, False])
def test_the_reference_path_is_the_fp8_product_and_close_to_float64(bias: bool) -> None:
    layer = _linear(96, 48, seed=1, bias=bias)
    fp8 = Fp8Linear.from_linear(layer)
    x = torch.randn(3, 7, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = fp8(x.float())
    assert got.shape == (3, 7, 48) and got.dtype == torch.float32
    # Exactly the dequantised operands' product (what _scaled_mm computes, up to accumulation order) ...
    x8, xs = quantize_rows(x.float().reshape(-1, 96))
    w8, ws = quantize_rows(layer.weight.float())
    want = (x8.double() * xs.double()) @ (w8.double() * ws.double()).T
    if bias:
        want = want + layer.bias
    assert rel_err(got.reshape(-1, 48), want) <= 1e-6
    # ... and within FP8's rounding of the float64 linear: two operands each off by ≤ 2⁻⁴, in practice ~3 %.
    exact = layer(x)
    err = rel_err(got, exact)
    assert 1e-3 < err <= 5e-2, f"{err:.3e}"
    # Per output channel, not one scale for the whole weight: the smallest channels keep their precision.
    small = slice(0, 8)
    assert rel_err(got[..., small], exact[..., small]) <= 5e-2


def test_weight_reads_back_the_dequantised_weight_in_the_layers_dtype() -> None:
    layer = _linear(32, 16, seed=3).float()
    fp8 = Fp8Linear.from_linear(layer)
    assert fp8.weight.dtype == torch.float32
    assert rel_err(fp8.weight, layer.weight.detach()) <= 5e-2
    assert not list(fp8.parameters()), "FP8 layers hold buffers only (nothing to train)"
    with pytest.raises(ValueError, match="takes 32 input features"):
        fp8(torch.zeros(2, 31))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_under_autocast_it_returns_the_linears_dtype_and_the_same_fp8_product(dtype: torch.dtype) -> None:
    # No bias: the product alone, so that the two results below are one rounding of the same numbers.
    layer = _linear(64, 32, seed=4, bias=False).to(dtype)
    fp8 = Fp8Linear.from_linear(layer)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    with torch.no_grad():
        plain = fp8(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear_dtype = layer(x).dtype
            got = fp8(x)
    # What the nn.Linear it replaces returns: bf16 for fp32 and bf16 inputs, float64 (autocast leaves it) ...
    assert got.dtype == linear_dtype
    # ... from the FP8 product computed as without autocast (in fp32, or float64), rounded once to that dtype.
    assert torch.equal(got, plain.to(linear_dtype))


def _tiny_wan() -> nn.Module:
    return rr.registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"}).eval()


def test_the_swap_covers_the_blocks_only_and_keeps_the_output_close() -> None:
    net = _tiny_wan()
    arch = net.arch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, arch.in_channels, 2, 4, 4, generator=g)
    t = torch.tensor([300.0, 800.0])
    text = torch.randn(2, 5, arch.text_dim, generator=g)
    with torch.no_grad():
        before = net(x, t, text)
        in_blocks = sum(isinstance(m, nn.Linear) for m in net.blocks.modules())
        outside = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and not n.startswith("blocks.")]
        assert fp8_linear_blocks(net) == in_blocks > 0
        after = net(x, t, text)
    assert not any(isinstance(m, nn.Linear) for m in net.blocks.modules())
    assert all(isinstance(net.get_submodule(n), nn.Linear) for n in outside), "embeddings and head keep precision"
    err = rel_err(after, before)
    assert 1e-4 < err <= 5e-2, f"{err:.3e}"


def test_the_swap_makes_each_gelu_mlp_one_module_of_two_fp8_linears() -> None:
    net = _tiny_wan()
    ffns = [block.ffn for block in net.blocks]
    assert all(is_gelu_mlp(f) for f in ffns)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, ffns[0][0].in_features, generator=g)
    with torch.no_grad():
        unfused = nn.Sequential(Fp8Linear.from_linear(ffns[0][0]), ffns[0][1], Fp8Linear.from_linear(ffns[0][2]))(x)
        fp8_linear_blocks(net)
        mlp = net.blocks[0].ffn
        assert type(mlp) is Fp8GeluMlp and [type(m) for m in mlp] == [Fp8Linear, nn.GELU, Fp8Linear]
        # Off the fused path (the CPU) it is the three children in turn: the unfused FP8 module's output.
        torch.testing.assert_close(mlp(x), unfused, rtol=0, atol=0)
    assert not is_gelu_mlp(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)))  # erf GELU: left alone
    assert not is_gelu_mlp(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)))


def test_the_swap_finds_nested_blocks_and_refuses_networks_without_them() -> None:
    labels = rr.registry().build(
        "network", "wan2.1-labels", dim=32, num_heads=2, num_layers=2, ffn_dim=64, text_dim=16, freq_dim=16,
        attention={"use": "math"},
    )  # fmt: skip
    assert fp8_linear_blocks(labels) > 0, "the digits network keeps its Wan under .wan"
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(rr.UserError, match="no transformer blocks"):
        fp8_linear_blocks(mlp)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scaled_mm_matches_the_reference_path() -> None:
    from rcm_registry.engine.fp8_linear import scaled_mm_possible

    # Wan2.1-1.3B's FFN: 1536 → 8960, and a token count that is not a multiple of 16.
    layer = nn.Linear(1536, 8960).cuda().to(torch.bfloat16)
    fp8 = Fp8Linear.from_linear(layer)
    x = torch.randn(1000, 1536, device="cuda", dtype=torch.bfloat16)
    assert scaled_mm_possible(x)
    got = fp8(x)
    x8, xs = quantize_rows(x)
    want = (x8.double() * xs.double()) @ fp8.dequantized_weight(torch.float64).T + layer.bias.double()
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) <= 1e-2  # fp32 accumulation, bf16 output
    assert rel_err(got, layer(x)) <= 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_the_fused_gelu_mlp_matches_the_unfused_fp8_module(dtype: torch.dtype) -> None:
    # Wan2.1-1.3B's feed-forward, a token count that is not a multiple of 16; fp32 weights under bf16
    # autocast as well as bf16 weights.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(1536, 8960), nn.GELU(approximate="tanh"), nn.Linear(8960, 1536)).cuda().to(dtype)
    unfused = nn.Sequential(Fp8Linear.from_linear(mlp[0]), mlp[1], Fp8Linear.from_linear(mlp[2]))
    fused = Fp8GeluMlp(Fp8Linear.from_linear(mlp[0]), mlp[1], Fp8Linear.from_linear(mlp[2]))
    x = torch.randn(1000, 1536, device="cuda", dtype=dtype)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.float32):
        got, want, exact = fused(x), unfused(x), mlp(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert rel_err(got, want) <= 1e-2  # the same FP8 products; the GELU's last bits only
    # Two FP8 products of about 3 % each (one layer: the test above) come to about 5 % (5.3 % on an H200).
    assert rel_err(got, exact) <= min(8e-2, rel_err(want, exact) + 1e-2)


def test_what_a_network_names_as_exempt_keeps_its_precision() -> None:
    # Cosmos' AdaLN-LoRA modulation heads read one time embedding a sample through the float32 time path,
    # by their `.weight`: FP8 would dequantise them every call and save nothing.
    net = rr.registry().build("network", "cosmos-predict2-t2i", size="tiny", attention={"use": "math"}).eval()
    heads = net.fp8_exempt()
    assert len(heads) == 3 * len(net.blocks)
    kept = {id(m) for head in heads for m in head.modules() if isinstance(m, nn.Linear)}
    others = [m for m in net.blocks.modules() if isinstance(m, nn.Linear) and id(m) not in kept]
    assert fp8_linear_blocks(net) == len(others) > 0
    assert sum(isinstance(m, nn.Linear) for m in net.blocks.modules()) == len(kept)
    assert not any(isinstance(m, Fp8Linear) for head in heads for m in head.modules())
