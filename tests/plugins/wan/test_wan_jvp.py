"""Forward-mode AD through the Wan2.1 network: forward_ad duals and torch.func.jvp agree, and are right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from network_testkit import JvpChecks, build, rel_err

from rcm_registry.jvp import jvp


class TestWanJvp(JvpChecks):
    kinds = ("wan2.1-t2v", "wan2.1-i2v")
    timestep_scale = 1000.0
    time_step = 1e-4

    def setup(self, name: str, seed: int) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return _setup(name, seed)


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
