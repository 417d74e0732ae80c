"""``cosmos_edm`` against an independent float64 evaluation of the Cosmos-Predict2 denoiser.

The reference works in Cosmos' own variables, as its pipelines do: EDM noise level σ, state
x_σ = x0 + σ·ε, preconditioning s = σ/(σ + 1), c_skip = 1 − s, c_out = −s, c_in = 1 − s, c_noise = s, and
(Video2World) frame replacement with σ_conditional; it is then read in TrigFlow only through σ = tan t,
x_σ = x_t/cos t and F = (cos t·x_t − x0)/sin t.
"""

from __future__ import annotations

import math

import pytest
import torch
from network_testkit import build, rel_err

import rcm_registry as rr


def _teacher(**config: float) -> object:
    return rr.registry().build("teacher", "cosmos_edm", **config)


def _cosmos_x0(net: torch.nn.Module, x_sigma: torch.Tensor, sigma: torch.Tensor, condition: dict, sigma_c: float):
    """Cosmos-Predict2's denoise (RectifiedFlowScaling, σ_data = 1; frame replacement for Video2World)."""
    s = (sigma / (sigma + 1)).view(-1, 1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = 1 - s, -s, 1 - s, s
    net_in = c_in * x_sigma
    timestep = c_noise.view(-1)
    kwargs = dict(condition)
    gt = kwargs.pop("condition_latents", None)
    if gt is not None:
        mask = kwargs["condition_mask"]
        net_in = gt * mask + net_in * (1 - mask)
        frames = mask.mean(dim=(1, 3, 4))
        timestep = frames * (sigma_c / (sigma_c + 1)) + (1 - frames) * timestep[:, None]
    with torch.no_grad():
        out = net(net_in, timestep, **kwargs)
    x0 = c_skip * x_sigma + c_out * out
    if gt is not None:
        x0 = gt * mask + x0 * (1 - mask)
    return x0


def _setup(name: str, seed: int, v2w: bool):
    torch.manual_seed(seed)
    net = build(name, size="tiny", attention={"use": "math"}).double().eval()
    g = torch.Generator().manual_seed(seed)
    b, shape = 3, (3, 4, 6)
    x_t = torch.randn(b, 16, *shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.07, 0.8, 1.52], dtype=torch.float64)
    cond = {"text": torch.randn(b, 5, 24, generator=g, dtype=torch.float64)}
    null = {"text": torch.zeros(b, 5, 24, dtype=torch.float64)}
    if v2w:
        mask = torch.zeros(b, 1, *shape, dtype=torch.float64)
        mask[:, :, :1] = 1.0
        gt = torch.randn(b, 16, *shape, generator=g, dtype=torch.float64)
        for c in (cond, null):
            c.update(condition_latents=gt, condition_mask=mask)
    return net, x_t, t, cond, null


@pytest.mark.parametrize(("name", "v2w"), [("cosmos-predict2-t2i", False), ("cosmos-predict2-v2w", True)])
def test_matches_the_cosmos_denoiser_in_float64(name: str, v2w: bool) -> None:
    net, x_t, t, cond, _ = _setup(name, seed=1, v2w=v2w)
    teacher = _teacher()
    x0, F = teacher.denoise(net, x_t, t, cond)
    tt = t.view(-1, 1, 1, 1, 1)
    x0_ref = _cosmos_x0(net, x_t / torch.cos(tt), torch.tan(t), cond, sigma_c=1e-4)
    F_ref = (torch.cos(tt) * x_t - x0_ref) / torch.sin(tt)
    assert x0.dtype == F.dtype == torch.float64
    assert rel_err(x0, x0_ref) <= 1e-12
    assert rel_err(F, F_ref) <= 1e-12
    if v2w:  # the conditioning frames are the clean latents exactly
        assert torch.equal(x0[:, :, :1], cond["condition_latents"][:, :, :1])


def test_guidance_is_cosmos_scale_plus_one() -> None:
    """Cosmos' x0_c + g·(x0_c − x0_u) equals this library's F_u + w·(F_c − F_u) at w = g + 1."""
    net, x_t, t, cond, null = _setup("cosmos-predict2-v2w", seed=2, v2w=True)
    g = 7.0
    x0, _ = _teacher(guidance=g + 1).denoise(net, x_t, t, cond, guidance=g + 1, null_condition=null)
    tt = t.view(-1, 1, 1, 1, 1)
    x_sigma, sigma = x_t / torch.cos(tt), torch.tan(t)
    x0_c, x0_u = (_cosmos_x0(net, x_sigma, sigma, c, sigma_c=1e-4) for c in (cond, null))
    assert rel_err(x0, x0_c + g * (x0_c - x0_u)) <= 1e-12


def test_time_scaling_and_conditional_sigma_reach_the_network() -> None:
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x: torch.Tensor, timestep: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
            seen.append(timestep)
            return x * 0

    t = torch.tensor([math.atan(3.0)], dtype=torch.float64)  # σ = 3: s = 0.75
    x = torch.ones(1, 2, 3, 2, 2, dtype=torch.float64)
    _teacher(t_scaling_factor=1000.0).denoise(Probe(), x, t, {})
    assert seen[-1].item() == pytest.approx(750.0, rel=1e-14)
    mask = torch.zeros(1, 1, 3, 2, 2, dtype=torch.float64)
    mask[:, :, 1] = 1.0
    _teacher(sigma_conditional=0.5).denoise(Probe(), x, t, {"condition_latents": x, "condition_mask": mask})
    assert seen[-1].shape == (1, 3) and seen[-1][0].tolist() == pytest.approx([0.75, 1 / 3, 0.75], rel=1e-14)
    with pytest.raises(ValueError, match="condition_mask"):
        _teacher().denoise(Probe(), x, t, {"condition_latents": x})
