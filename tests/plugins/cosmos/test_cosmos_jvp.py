"""Forward-mode AD through the Cosmos-Predict2 network: forward_ad duals and torch.func.jvp agree, and are right."""

from __future__ import annotations

from typing import Any

import torch
from network_testkit import JvpChecks, build, rel_err

from rcm_registry.jvp import jvp


class TestCosmosJvp(JvpChecks):
    kinds = ("cosmos-predict2-t2i", "cosmos-predict2-v2w")
    timestep_scale = 1.0
    time_step = 1e-5

    def setup(self, name: str, seed: int) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        # Video2World with per-frame timesteps (its conditioning frames get their own), Text2Image one per sample.
        per_frame = name == "cosmos-predict2-v2w"
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
