"""Teacher wrappers against hand formulas: oracle networks that know x0 and ε, SNR matching, CFG, dtypes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from distill_testkit import assert_close, col
from rcm_plugins.distill.common import guidance_for
from rcm_plugins.distill.edm import EdmConfig, EdmTeacher
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from rcm_plugins.distill.vp_eps import VpEpsConfig, VpEpsTeacher
from torch import Tensor, nn

from rcm_registry.jvp import jvp
from rcm_registry.testing.fixtures import HALF_PI, NULL_LABEL, TinyNet


def _data(t: list[float], dim: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tt = torch.tensor(t, dtype=torch.float64)
    x0 = torch.randn(len(t), dim, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), dim, generator=gen, dtype=torch.float64)
    x_t = torch.cos(col(tt, x0)) * x0 + torch.sin(col(tt, x0)) * eps
    return tt, x0, eps, x_t


class Oracle(nn.Module):
    """Checks what it is fed against expected inputs and answers with a given output."""

    def __init__(self, expect_x: Tensor | None, expect_time: Tensor | None, answer: Tensor) -> None:
        super().__init__()
        self.expect_x, self.expect_time, self.answer = expect_x, expect_time, answer
        self.seen_time_dtype: torch.dtype | None = None

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        self.seen_time_dtype = timestep.dtype
        if self.expect_x is not None:
            assert_close(x, self.expect_x, 1e-12, "network input")
        if self.expect_time is not None:
            assert_close(timestep, self.expect_time, 1e-12, "network time")
        return self.answer.to(x.dtype)


def _velocity_of(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """TrigFlow velocity dx_t/dt = cos t·ε − sin t·x0."""
    return torch.cos(col(t, x0)) * eps - torch.sin(col(t, x0)) * x0


# -- rectified flow ---------------------------------------------------------------------------------
def test_rectified_flow_oracle_round_trip_including_endpoints() -> None:
    t, x0, eps, x_t = _data([0.0, 1e-9, 0.3, 0.785, 1.2, HALF_PI - 1e-9, HALF_PI])
    s = torch.sin(t) / (torch.cos(t) + torch.sin(t))
    x_rf = (1 - col(s, x0)) * x0 + col(s, x0) * eps  # what the RF network was trained on
    net = Oracle(x_rf, 1000.0 * s, eps - x0)
    got_x0, got_F = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0)).denoise(net, x_t, t, {})
    assert torch.isfinite(got_F).all()
    assert_close(got_x0, x0, 1e-12, "x0")
    assert_close(got_F, _velocity_of(x0, eps, t), 1e-12, "F")


def test_rectified_flow_matches_design_formula_with_real_network() -> None:
    t, _, _, x_t = _data([0.05, 0.4, 0.9, 1.4], dim=2)
    net = TinyNet(seed=3)
    cond = {"label": torch.tensor([0, 1, 2, 0])}
    got_x0, got_F = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0)).denoise(net, x_t, t, cond)
    c, s = torch.cos(col(t, x_t)), torch.sin(col(t, x_t))
    s_rf, c_in = s / (c + s), 1 / (c + s)
    v = net(c_in * x_t, 1000.0 * s_rf.flatten(), **cond)
    x0 = c_in * x_t - s_rf * v
    assert_close(got_x0, x0, 1e-12, "x0")
    assert_close(got_F, (c * x_t - x0) / s, 1e-11, "F")


# -- EDM ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 1.7])
def test_edm_x0_oracle_and_snr_matching(sigma_data: float) -> None:
    t, x0, eps, x_t = _data([0.02, 0.3, 0.8, 1.2, 1.5])
    sigma = torch.tan(t)
    y = x_t / col(torch.cos(t), x_t)  # = x0 + σ·ε: the EDM state at the SNR-matched σ
    assert_close(y, x0 + col(sigma, x0) * eps, 1e-10, "SNR matching")
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sd2)
    c_in = 1 / torch.sqrt(sigma**2 + sd2)
    answer = (x0 - col(c_skip, x0) * y) / col(c_out, x0)
    net = Oracle(col(c_in, y) * y, 2.0 * 0.25 * torch.log(sigma), answer)
    wrapper = EdmTeacher(EdmConfig(prediction="x0", sigma_data=sigma_data, t_scale=2.0))
    got_x0, got_F = wrapper.denoise(net, x_t, t, {})
    assert_close(got_x0, x0, 1e-10, "x0")
    assert_close(got_F, _velocity_of(x0, eps, t), 1e-10, "F")


def test_edm_x0_is_finite_at_the_ends() -> None:
    t, _, _, x_t = _data([1e-12, HALF_PI])
    x0, F = EdmTeacher(EdmConfig()).denoise(TinyNet(dim=3, seed=1), x_t, t, {})
    assert torch.isfinite(x0).all() and torch.isfinite(F).all()
    # At t → 0 the skip connection dominates: x0 = x_t.
    assert_close(x0[0], x_t[0], 1e-6, "x0 at t=0")


def test_edm_eps_oracle() -> None:
    t, x0, eps, x_t = _data([0.1, 0.7, 1.3])
    sigma = torch.tan(t)
    y = x_t / col(torch.cos(t), x_t)
    c_in = 1 / torch.sqrt(sigma**2 + 0.25)
    net = Oracle(col(c_in, y) * y, 0.25 * torch.log(sigma), eps)
    got_x0, got_F = EdmTeacher(EdmConfig(prediction="eps", sigma_data=0.5)).denoise(net, x_t, t, {})
    assert_close(got_x0, x0, 1e-10, "x0")
    assert_close(got_F, _velocity_of(x0, eps, t), 1e-10, "F")


# -- VP ε ---------------------------------------------------------------------------------------------
def _interp_log_alpha_bar(table: Tensor, tau: Tensor) -> Tensor:
    lo = tau.floor().long().clamp(max=table.numel() - 2)
    frac = tau - lo.to(torch.float64)
    return table[lo] * (1 - frac) + table[lo + 1] * frac


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_vp_discrete_oracle_and_snr_matching(beta_schedule: str) -> None:
    t, x0, eps, x_t = _data([0.05, 0.4, 1.0, 1.45, 1.55])
    if beta_schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    else:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    log_ab = torch.log(torch.cumprod(1 - betas, 0))
    seen: list[Tensor] = []

    class Net(nn.Module):
        def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
            assert_close(x, x_t, 1e-14, "VP input is x_t itself")
            seen.append(timestep)
            return eps

    cfg = VpEpsConfig(alphas="discrete", beta_schedule=beta_schedule)
    if beta_schedule == "scaled_linear":
        cfg = VpEpsConfig(alphas="discrete", beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012)
    got_x0, got_F = VpEpsTeacher(cfg).denoise(Net(), x_t, t, {})
    tau = seen[0]
    inside = (tau > 0) & (tau < 999)
    assert inside.sum() >= 3
    # ᾱ(τ) = cos²t wherever t lies in the trained range; clamped to the ends outside it.
    assert_close(_interp_log_alpha_bar(log_ab, tau)[inside], 2 * torch.log(torch.cos(t))[inside], 1e-10, "ᾱ")
    assert torch.all((tau[~inside] == 0) | (tau[~inside] == 999))
    assert_close(got_x0, x0, 1e-9, "x0")
    assert_close(got_F, _velocity_of(x0, eps, t), 1e-9, "F")


def test_vp_continuous_time_mapping() -> None:
    t, x0, eps, x_t = _data([0.01, 0.5, 1.2, 1.5])
    seen: list[Tensor] = []

    class Net(nn.Module):
        def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
            seen.append(timestep)
            return eps

    wrapper = VpEpsTeacher(VpEpsConfig(alphas="continuous", beta_min=0.1, beta_max=20.0, t_scale=1000.0))
    got_x0, _ = wrapper.denoise(Net(), x_t, t, {})
    u = seen[0] / 1000.0
    alpha_bar = torch.exp(-0.1 * u - 0.5 * 19.9 * u**2)
    assert_close(alpha_bar, torch.cos(t) ** 2, 1e-10, "ᾱ(u) = cos²t")
    assert_close(got_x0, x0, 1e-9, "x0")


@pytest.mark.parametrize(
    "wrapper",
    [
        RectifiedFlowTeacher(RectifiedFlowConfig()),
        EdmTeacher(EdmConfig()),
        EdmTeacher(EdmConfig(prediction="eps")),
        VpEpsTeacher(VpEpsConfig()),
        VpEpsTeacher(VpEpsConfig(alphas="continuous", t_scale=1000.0)),
    ],
    ids=["rf", "edm_x0", "edm_eps", "vp_discrete", "vp_continuous"],
)
def test_time_tangent_matches_finite_difference(wrapper: object) -> None:
    """∂F/∂t through the wrapper (time → network time, forward AD) against a central difference."""
    t, _, _, x_t = _data([0.3, 0.8, 1.1], dim=2, seed=4)
    net = TinyNet(seed=5)

    def F(tt: Tensor) -> Tensor:
        return wrapper.denoise(net, x_t, tt, {})[1]

    _, dF = jvp(F, (t,), (torch.ones_like(t),))
    h = 1e-6
    fd = (F(t + h) - F(t - h)) / (2 * h)
    assert_close(dF, fd, 1e-6, "time tangent")


# -- CFG and dtypes ---------------------------------------------------------------------------------
def test_cfg_folded_into_F() -> None:
    t, _, _, x_t = _data([0.2, 0.9, 1.3], dim=2)
    net = TinyNet(seed=9)
    cond = {"label": torch.tensor([0, 1, 2])}
    null = {"label": torch.full((3,), NULL_LABEL)}
    wrapper = RectifiedFlowTeacher(RectifiedFlowConfig(guidance=4.0))
    x0_c, F_c = wrapper.denoise(net, x_t, t, cond)
    x0_u, F_u = wrapper.denoise(net, x_t, t, null)
    x0_g, F_g = wrapper.denoise(net, x_t, t, cond, guidance=2.5, null_condition=null)
    assert_close(F_g, F_u + 2.5 * (F_c - F_u), 1e-12, "F")
    assert_close(x0_g, x0_u + 2.5 * (x0_c - x0_u), 1e-12, "x0 is the same combination")
    assert_close(x0_g, torch.cos(col(t, x_t)) * x_t - torch.sin(col(t, x_t)) * F_g, 1e-12, "x0 from F")
    # No guidance unless both the scale and a null condition are given; w = 1 is the conditional output.
    for kwargs in ({}, {"guidance": 2.5}, {"null_condition": null}, {"guidance": 1.0, "null_condition": null}):
        x0, F = wrapper.denoise(net, x_t, t, cond, **kwargs)
        assert torch.equal(F, F_c) and torch.equal(x0, x0_c), kwargs
    assert wrapper.guidance == 4.0


@pytest.mark.parametrize(
    ("applies", "w", "mixed"),
    [("not_one", 0.0, True), ("not_one", 0.5, True), ("not_one", 1.0, False), ("not_one", 3.0, True),
     ("above_one", 0.0, False), ("above_one", 0.5, False), ("above_one", 1.0, False), ("above_one", 3.0, True)],
)  # fmt: skip
def test_which_guidance_scales_apply_cfg(applies: str, w: float, mixed: bool) -> None:
    t, _, _, x_t = _data([0.4, 1.1], dim=2)
    net = TinyNet(seed=10)
    cond, null = {"label": torch.tensor([0, 3])}, {"label": torch.full((2,), NULL_LABEL)}
    wrapper = RectifiedFlowTeacher(RectifiedFlowConfig(guidance=w, guidance_applies=applies))
    _, F_c = wrapper.denoise(net, x_t, t, cond)
    _, F_u = wrapper.denoise(net, x_t, t, null)
    _, F = wrapper.denoise(net, x_t, t, cond, guidance=w, null_condition=null)
    assert wrapper.guides(w) is mixed
    if mixed:
        assert_close(F, F_u + w * (F_c - F_u), 1e-12, "guided F")
    else:  # the conditional model alone (the release's rule for w <= 1)
        assert torch.equal(F, F_c)


def test_losses_follow_the_wrappers_guidance_rule() -> None:
    ctx = SimpleNamespace(
        teacher=RectifiedFlowTeacher(RectifiedFlowConfig(guidance=0.5, guidance_applies="above_one")),
        batch=SimpleNamespace(null_condition=None),
    )
    assert guidance_for(ctx, None, "scm") == (None, None)  # w = 0.5 applies nothing: no null needed
    with pytest.raises(RuntimeError, match=r"guidance 2\.0 needs an unconditional"):
        guidance_for(ctx, 2.0, "scm")
    ctx.teacher = RectifiedFlowTeacher(RectifiedFlowConfig(guidance=0.5))
    with pytest.raises(RuntimeError, match=r"guidance 0\.5 needs an unconditional"):
        guidance_for(ctx, None, "scm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_network_dtype_policy(dtype: torch.dtype) -> None:
    t, _, _, x_t = _data([0.3, 1.0], dim=2)
    seen: dict[str, torch.dtype] = {}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2, dtype=dtype)

        def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
            seen["x"], seen["time"] = x.dtype, timestep.dtype
            return self.lin(x)

    x0, F = RectifiedFlowTeacher(RectifiedFlowConfig()).denoise(Net(), x_t.float(), t, {})
    assert seen == {"x": dtype, "time": dtype}
    assert x0.dtype == torch.float32 and F.dtype == torch.float32
    bf16 = Net().to(torch.bfloat16)
    RectifiedFlowTeacher(RectifiedFlowConfig()).denoise(bf16, x_t.float(), t, {})
    assert seen == {"x": torch.bfloat16, "time": torch.float32}


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="beta_max"):
        VpEpsConfig(alphas="continuous", beta_min=5.0, beta_max=1.0)
    assert math.isclose(RectifiedFlowConfig().t_scale, 1000.0)
