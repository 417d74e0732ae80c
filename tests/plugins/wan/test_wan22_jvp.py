"""Forward-mode AD through the Wan2.2 networks: the tangent of each sample is its expert's, and right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from network_testkit import JvpChecks, build, rel_err

from rcm_registry.jvp import jvp


class TestWan22ExpertsJvp(JvpChecks):
    kinds = ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b")
    timestep_scale = 1000.0
    time_step = 1e-4

    def setup(self, name: str, seed: int) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(seed)
        net = build(name, size="tiny", attention={"use": "math"}).double().eval()
        g = torch.Generator().manual_seed(seed)
        b, shape = 2, (3, 6, 10)
        primals = {
            "x": torch.randn(b, 16, *shape, generator=g, dtype=torch.float64),
            # One sample per expert (boundary 875 / 900), away from the switch, where the routing is constant.
            "timestep": torch.tensor([960.0, 300.0], dtype=torch.float64),
            "text": torch.randn(b, 7, net.arch.text_dim, generator=g, dtype=torch.float64),
        }
        if name == "wan2.2-i2v-a14b":
            primals["image_latent"] = torch.randn(b, 20, *shape, generator=g, dtype=torch.float64)
        tangents = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in primals.items()}
        return net, primals, tangents


def test_a_mixed_batch_has_each_expert_s_own_tangent() -> None:
    net, primals, tangents = TestWan22ExpertsJvp().setup("wan2.2-t2v-a14b", seed=3)
    args = ("x", "timestep", "text")
    _, tangent = jvp(lambda *a: net(*a), tuple(primals[k] for k in args), tuple(tangents[k] for k in args))
    for i, expert in enumerate((net.high_noise, net.low_noise)):
        one = tuple(primals[k][i : i + 1] for k in args)
        _, alone = jvp(lambda *a, e=expert: e(*a), one, tuple(tangents[k][i : i + 1] for k in args))
        assert rel_err(tangent[i : i + 1], alone) <= 1e-12


def test_ti2v_first_frame_tangent_is_the_velocity_towards_the_frame() -> None:
    """Dual x and timestep through the 5B with a first frame: torch.func agrees with finite differences."""
    torch.manual_seed(0)
    net = build("wan2.2-ti2v-5b", size="tiny", attention={"use": "math"}).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, 3, 4, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([700.0, 250.0], dtype=torch.float64)
    text = torch.randn(2, 5, net.arch.text_dim, generator=g, dtype=torch.float64)
    frame = torch.randn(2, 48, 1, 4, 6, generator=g, dtype=torch.float64)
    dx, dt = torch.randn_like(x), torch.randn_like(t)

    def f(x_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return net(x_, t_, text, first_frame=frame)

    out, tangent = torch.func.jvp(f, (x, t), (dx, dt))
    _, engine = jvp(f, (x, t), (dx, dt))
    h = 1e-5
    with torch.no_grad():
        fd = (f(x + h * dx, t + h * dt) - f(x - h * dx, t - h * dt)) / (2 * h)
    assert rel_err(engine, tangent) <= 1e-10 and rel_err(tangent, fd) <= 1e-6
    # On the first frame, v = (x − frame)/s: its tangent is dx/s − v·ds/s.
    s, ds = (t / 1000).view(2, 1, 1, 1, 1), (dt / 1000).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(tangent[:, :, :1], dx[:, :, :1] / s - out[:, :, :1] * ds / s, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_jvp_backend_through_both_experts_on_cuda() -> None:
    """The fused JVP attention in each expert, bf16 on the GPU, against float64 ``math``; a mixed batch, and
    one expert on no samples (the process-group mode), whose empty batch never reaches the kernel."""
    torch.manual_seed(0)
    shape = {"size": "tiny", "dim": 256, "num_heads": 2}  # real head width (128): production tile shapes
    ref = build("wan2.2-t2v-a14b", **shape, attention={"use": "math"}).cuda().double().eval()
    net = build("wan2.2-t2v-a14b", **shape, attention={"use": "triton_jvp"}).cuda().eval()
    net.load_state_dict(ref.state_dict())
    net = net.to(torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2, 16, 5, 16, 18, generator=g, device="cuda", dtype=torch.float64)
    text = torch.randn(2, 40, 32, generator=g, device="cuda", dtype=torch.float64)
    dx = torch.randn_like(x)
    for t, every in ((torch.tensor([950.0, 200.0]), False), (torch.tensor([950.0, 990.0]), True)):
        t = t.to("cuda", torch.float64)
        dt = torch.randn_like(t)
        net.run_every_expert = every
        out64, tan64 = jvp(lambda a, b: ref(a, b, text), (x, t), (dx, dt))
        out16, tan16 = jvp(lambda a, b: net(a, b, text.bfloat16()), (x.bfloat16(), t.float()), (dx, dt))
        assert rel_err(out16, out64) < 3e-2
        assert rel_err(tan16, tan64) < 5e-2
