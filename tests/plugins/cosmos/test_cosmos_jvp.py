"""Forward-mode AD through the Cosmos-Predict2 network: forward_ad duals and torch.func.jvp agree, and are right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _cosmos_helpers import build, rel_err
from torch.autograd import forward_ad

from rcm_registry.jvp import jvp


def _setup(name: str, seed: int, per_frame: bool) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    net = build(name, size="tiny", learnable_pos_embed=True, attention={"use": "math"}).double().eval()
    g = torch.Generator().manual_seed(seed)
    b, shape = 2, (3, 6, 10)
    primals = {
        "x": torch.randn(b, 16, *shape, generator=g, dtype=torch.float64),
        "timestep": 0.05 + 0.9 * torch.rand((b, shape[0]) if per_frame else (b,), generator=g, dtype=torch.float64),
        "text": torch.randn(b, 7, net.arch.text_dim, generator=g, dtype=torch.float64),
    }
    # Tangents on every input, as the sCM tangent moves x and t (and tests the conditioning path too).
    tangents = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in primals.items()}
    if net.arch.v2w:
        mask = torch.zeros(b, 1, *shape, dtype=torch.float64)
        mask[:, :, :1] = 1.0
        primals["condition_mask"], tangents["condition_mask"] = mask, torch.zeros_like(mask)
    return net, primals, tangents


@pytest.mark.parametrize(("name", "per_frame"), [("cosmos-predict2-t2i", False), ("cosmos-predict2-v2w", True)])
def test_forward_ad_matches_torch_func_jvp_and_finite_differences(name: str, per_frame: bool) -> None:
    net, primals, tangents = _setup(name, seed=7, per_frame=per_frame)
    keys = list(primals)

    def f(*args: torch.Tensor) -> torch.Tensor:
        return net(**dict(zip(keys, args, strict=True)))

    args = tuple(primals[k] for k in keys)
    dirs = tuple(tangents[k] for k in keys)
    with torch.no_grad():
        out = f(*args)
    func_out, func_tangent = torch.func.jvp(f, args, dirs)
    with torch.no_grad(), forward_ad.dual_level():
        dual = f(*(forward_ad.make_dual(a, d) for a, d in zip(args, dirs, strict=True)))
        fw_out, fw_tangent = forward_ad.unpack_dual(dual)
    _, eng_tangent = jvp(f, args, dirs)

    assert fw_tangent is not None and fw_tangent.abs().max() > 0
    assert rel_err(fw_out, out) <= 1e-14 and rel_err(func_out, out) <= 1e-14
    assert rel_err(fw_tangent, func_tangent) <= 1e-10
    assert rel_err(eng_tangent, func_tangent) <= 1e-10
    # Both AD modes could drop the same tangent path (a stray detach): central differences cannot.
    h = 1e-5
    with torch.no_grad():
        plus = f(*(a + h * d for a, d in zip(args, dirs, strict=True)))
        minus = f(*(a - h * d for a, d in zip(args, dirs, strict=True)))
    assert rel_err(fw_tangent, (plus - minus) / (2 * h)) <= 1e-6


def test_time_tangent_alone_is_right() -> None:
    """The time path (sinusoid, RMSNorm, AdaLN-LoRA, modulation) carries its own tangent."""
    net, primals, _ = _setup("cosmos-predict2-t2i", seed=8, per_frame=False)

    def f(t: torch.Tensor) -> torch.Tensor:
        return net(primals["x"], t, primals["text"])

    dt = torch.ones_like(primals["timestep"])
    _, tangent = torch.func.jvp(f, (primals["timestep"],), (dt,))
    h = 1e-5
    with torch.no_grad():
        fd = (f(primals["timestep"] + h) - f(primals["timestep"] - h)) / (2 * h)
    assert tangent.abs().max() > 0
    assert rel_err(tangent, fd) <= 1e-6


def test_sdpa_backend_refuses_dual_tensors_through_the_network() -> None:
    net = build("cosmos-predict2-t2i", size="tiny", attention={"use": "sdpa"}).eval()
    x, t, text = torch.randn(1, 16, 1, 4, 4), torch.rand(1), torch.randn(1, 3, 24)
    with pytest.raises(Exception, match="forward-mode AD"):
        jvp(lambda x_: net(x_, t, text), (x,), (torch.randn_like(x),))


def test_bf16_network_keeps_the_time_path_in_float32() -> None:
    net = build("cosmos-predict2-t2i", size="tiny", attention={"use": "math"}).eval()
    ref = build("cosmos-predict2-t2i", size="tiny", attention={"use": "math"}).eval()
    ref.load_state_dict(net.state_dict())
    net = net.to(torch.bfloat16)
    t = torch.tensor([0.999, 0.0015])
    e, lora = net.time_embedding_of(t, torch.float32)
    assert e.dtype == lora.dtype == torch.float32
    e32, lora32 = ref.time_embedding_of(t, torch.float32)
    assert rel_err(e, e32) < 2e-2 and rel_err(lora, lora32) < 2e-2
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 1, 4, 4, generator=g), torch.randn(1, 3, 24, generator=g)
    out, tangent = jvp(lambda a: net(a, t[:1], text), (x,), (torch.randn_like(x),))
    assert out.dtype == tangent.dtype == torch.float32  # returned in x's dtype
    with torch.no_grad():
        assert rel_err(out, ref(x, t[:1], text)) < 3e-2
