"""The ``int8_sage`` backend through the registry: the attention contract at INT8 accuracy, its CPU route (the
torch reference of the kernel's quantisation), and its refusals (inference only)."""

from __future__ import annotations

import math

import pytest
import torch
from rcm_plugins.attention.int8_sage_attention import InferenceOnlyError
from torch.autograd import forward_ad

import rcm_registry as rr
from rcm_kernels import attention_int8 as K
from rcm_registry.protocols import head_dim_problem
from rcm_registry.testing import AttentionContract
from rcm_registry.testing.fixtures import rel_err


class TestInt8SageAttention(AttentionContract):
    """Held to INT8 accuracy (about 1 % on unit-normal inputs); it has no backward, which is checked below."""

    name = "int8_sage"
    dtype = torch.float32
    tolerance = 2.5e-2

    def test_backward_equals_the_reference(self) -> None:
        attn = self.make()
        for q, k, v, scale in self.cases(1):
            with pytest.raises(InferenceOnlyError, match="sampling only"):
                attn(q.requires_grad_(), k, v, scale=scale)


def _qkv(nq: int, nk: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, d, generator=gen).to(dtype) for n in (nq, nk, nk)]


def test_it_declares_no_jvp_and_limits_the_head_dim() -> None:
    comp = rr.registry().get("attention", "int8_sage")
    assert "jvp" not in comp.provides
    config = rr.registry().config("attention", "int8_sage")
    assert head_dim_problem(config, 64) is None and head_dim_problem(config, 128) is None
    assert "head dim 512" in (head_dim_problem(config, 512) or "")


@pytest.mark.parametrize("d", [64, 128])
def test_the_cpu_route_is_the_reference_with_the_kernels_blocks(d: int) -> None:
    # 300 queries and 200 keys: more than one of the GPU kernel's 128-row query and 64-row key blocks.
    q, k, v = _qkv(300, 200, d, seed=d, dtype=torch.bfloat16)
    got = rr.registry().build("attention", "int8_sage")(q, k, v)
    cfg = K.default_config(d, torch.device("cuda"))
    want = K.int8_attention_reference(q, k, v, block_m=cfg.block_m, block_n=cfg.block_n)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert rel_err(got, want) <= 1e-2  # fp32 softmax and the bf16 output's rounding
    exact = torch.softmax(q.double() @ k.double().transpose(-2, -1) / math.sqrt(d), -1) @ v.double()
    assert 1e-4 < rel_err(got, exact) <= 2.5e-2


def test_smooth_k_is_passed_on() -> None:
    q, k, v = _qkv(64, 64, 64, seed=1)
    k = k + 20.0 * torch.randn(1, 1, 1, 64, generator=torch.Generator().manual_seed(9))
    exact = torch.softmax(q.double() @ k.double().transpose(-2, -1) / 8.0, -1) @ v.double()
    smooth = rel_err(rr.registry().build("attention", "int8_sage")(q, k, v), exact)
    raw = rel_err(rr.registry().build("attention", "int8_sage", smooth_k=False)(q, k, v), exact)
    assert raw > 3 * smooth


def test_pv_is_passed_on_and_checked() -> None:
    # 150 keys: three of the kernel's 64-key blocks, the last a tail.
    q, k, v = _qkv(130, 150, 64, seed=5)
    exact = torch.softmax(q.double() @ k.double().transpose(-2, -1) / 8.0, -1) @ v.double()
    fp8 = rr.registry().build("attention", "int8_sage", pv="fp8")
    assert repr(fp8) == "Int8SageAttention(smooth_k=True, pv=fp8)"
    cfg = K.default_config(64, torch.device("cuda"), "fp8")
    want = K.int8_attention_reference(q, k, v, block_m=cfg.block_m, block_n=cfg.block_n, pv="fp8")
    got = fp8(q, k, v)
    assert rel_err(got, want) <= 1e-5  # the CPU route is that reference
    input_pv = rel_err(rr.registry().build("attention", "int8_sage")(q, k, v), exact)
    assert 1.5 * input_pv < rel_err(got, exact) <= 5e-2
    with pytest.raises(rr.UserError, match="pv"):
        rr.registry().build("attention", "int8_sage", pv="fp4")


def test_dual_tensors_are_refused() -> None:
    q, k, v = _qkv(8, 8, 64, seed=2)
    attn = rr.registry().build("attention", "int8_sage")
    with forward_ad.dual_level(), pytest.raises(InferenceOnlyError, match="forward-mode AD"):
        attn(forward_ad.make_dual(q, torch.ones_like(q)), k, v)


def test_inputs_that_require_grad_are_refused_only_while_grad_is_enabled() -> None:
    q, k, v = _qkv(8, 8, 64, seed=3)
    attn = rr.registry().build("attention", "int8_sage")
    with pytest.raises(InferenceOnlyError, match="no backward"):
        attn(q, k, v.requires_grad_())
    with torch.no_grad():
        assert attn(q, k, v).shape == q.shape


def test_unsupported_inputs_are_a_user_error_naming_the_problem() -> None:
    attn = rr.registry().build("attention", "int8_sage")
    q, k, v = _qkv(8, 8, 8, seed=4)
    with pytest.raises(rr.UserError, match=r"int8_sage.*head dim must be in"):
        attn(q, k, v)
    q, k, v = _qkv(8, 8, 64, seed=4, dtype=torch.float64)
    with pytest.raises(rr.UserError, match=r"int8_sage.*float16, bfloat16, float32"):
        attn(q, k, v)


def test_a_network_sampled_with_it_stays_close_to_sdpa() -> None:
    # The moving-digits network's geometry (width 256, heads of 32, 9x8x8 video tokens, 8 label tokens as
    # cross-attention keys), on CUDA through the kernel and elsewhere through the reference.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = {"dim": 256, "num_heads": 8, "num_layers": 2, "ffn_dim": 512, "text_dim": 64, "freq_dim": 64}
    outs = {}
    for name in ("sdpa", "int8_sage"):
        torch.manual_seed(0)
        net = rr.registry().build(
            "network", "wan2.1-labels", **config, patch_size=[1, 4, 4], extra_labels={"direction": 8},
            attention={"use": name},
        )  # fmt: skip
        # Sharper attention than at initialisation, as a trained network's: with near-uniform weights an
        # attention that reads the wrong keys still returns about the mean of V, and would pass.
        for key, param in net.named_parameters():
            if ".norm_q." in key or ".norm_k." in key:
                param.data.mul_(4.0)
        net = net.to(device=device, dtype=dtype).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(3, 1, 9, 32, 32, generator=gen).to(device, dtype)
        t = (10 * torch.rand(3, generator=gen)).to(device, dtype)
        label, direction = torch.tensor([1, 7, 10], device=device), torch.tensor([0, 5, 8], device=device)
        with torch.no_grad():
            outs[name] = net(x, t, label=label, direction=direction)
    assert torch.isfinite(outs["int8_sage"]).all()
    # bf16 alone puts the two about 1 % apart on CUDA; INT8 scores add about as much.
    assert rel_err(outs["int8_sage"], outs["sdpa"]) <= 5e-2
