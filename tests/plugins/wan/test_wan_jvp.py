"""Forward-mode AD through the Wan2.1 network: forward_ad duals and torch.func.jvp agree, and are right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _wan_helpers import build, rel_err
from torch.autograd import forward_ad

from rcm_registry.jvp import jvp


def _setup(name: str, seed: int) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    net = build(name, size="tiny", attention={"use": "math"}).double().eval()
    g = torch.Generator().manual_seed(seed)
    arch = net.arch
    b, shape = 2, (3, 6, 10)
    primals = {
        "x": torch.randn(b, 16, *shape, generator=g, dtype=torch.float64),
        "timestep": 100 + 800 * torch.rand(b, generator=g, dtype=torch.float64),
        "text": torch.randn(b, 7, arch.text_dim, generator=g, dtype=torch.float64),
    }
    if arch.i2v:
        primals["image"] = torch.randn(b, 5, arch.image_dim, generator=g, dtype=torch.float64)
        primals["image_latent"] = torch.randn(b, 20, *shape, generator=g, dtype=torch.float64)
    # Tangents on every input, as the sCM tangent moves x and t (and tests the conditioning paths too).
    tangents = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in primals.items()}
    return net, primals, tangents


@pytest.mark.parametrize("name", ["wan2.1-t2v", "wan2.1-i2v"])
def test_forward_ad_matches_torch_func_jvp_and_finite_differences(name: str) -> None:
    net, primals, tangents = _setup(name, seed=7)
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
    """The time path (float32-rounded frequencies, sinusoid, MLP, modulation) carries its own tangent."""
    net, primals, _ = _setup("wan2.1-t2v", seed=8)
    dt = torch.ones_like(primals["timestep"])

    def f(t: torch.Tensor) -> torch.Tensor:
        return net(primals["x"], t, primals["text"])

    _, tangent = torch.func.jvp(f, (primals["timestep"],), (dt,))
    h = 1e-4
    with torch.no_grad():
        fd = (f(primals["timestep"] + h) - f(primals["timestep"] - h)) / (2 * h)
    assert tangent.abs().max() > 0
    assert rel_err(tangent, fd) <= 1e-6


def test_sdpa_backend_refuses_dual_tensors_through_the_network() -> None:
    """The network reaches attention only through its configured backend: sdpa's dual check fires."""
    net = build("wan2.1-t2v", size="tiny", attention={"use": "sdpa"}).eval()
    x, t, text = torch.randn(1, 16, 1, 4, 4), torch.rand(1) * 1000, torch.randn(1, 3, 32)
    with pytest.raises(Exception, match="forward-mode AD"):
        jvp(lambda x_: net(x_, t, text), (x,), (torch.randn_like(x),))


def test_bf16_jvp_error_is_small() -> None:
    """bf16 network vs float64 on the same weights (figures in benchmarks/RESULTS.md, Wan2.1 network)."""
    net64, primals, tangents = _setup("wan2.1-t2v", seed=9)
    net16 = build("wan2.1-t2v", size="tiny", attention={"use": "math"}).eval()
    net16.load_state_dict(net64.state_dict())
    net16 = net16.to(torch.bfloat16)
    x, t, text = primals["x"], primals["timestep"], primals["text"]
    dx, dt = tangents["x"], tangents["timestep"]
    out64, tan64 = jvp(lambda a, b: net64(a, b, text), (x, t), (dx, dt))
    out16, tan16 = jvp(
        lambda a, b: net16(a, b, text.bfloat16()), (x.bfloat16(), t.float()), (dx.bfloat16(), dt.float())
    )
    assert tan16.dtype == torch.bfloat16
    # bf16 has 8 mantissa bits (2^-9 ≈ 2e-3 relative rounding); a few layers compound it to ~1e-2.
    assert rel_err(out16, out64) < 3e-2
    assert rel_err(tan16, tan64) < 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_jvp_backend_through_the_network_on_cuda() -> None:
    """The fused JVP attention inside the network, bf16 on the GPU, against float64 ``math``."""
    torch.manual_seed(0)
    # Real head width (128) so the kernel runs its production tile shapes; few tokens keep float64 cheap.
    ref = build("wan2.1-t2v", size="tiny", dim=256, num_heads=2, attention={"use": "math"}).cuda().double().eval()
    net = build("wan2.1-t2v", size="tiny", dim=256, num_heads=2, attention={"use": "triton_jvp"}).cuda().eval()
    net.load_state_dict(ref.state_dict())
    net = net.to(torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2, 16, 5, 16, 18, generator=g, device="cuda", dtype=torch.float64)
    t = 1000 * torch.rand(2, generator=g, device="cuda", dtype=torch.float64)
    text = torch.randn(2, 40, 32, generator=g, device="cuda", dtype=torch.float64)
    dx, dt = torch.randn_like(x), torch.randn_like(t)
    out64, tan64 = jvp(lambda a, b: ref(a, b, text), (x, t), (dx, dt))
    out16, tan16 = jvp(lambda a, b: net(a, b, text.bfloat16()), (x.bfloat16(), t.float()), (dx, dt))
    assert rel_err(out16, out64) < 3e-2
    assert rel_err(tan16, tan64) < 5e-2
