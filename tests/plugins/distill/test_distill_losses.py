"""sCM, dCM, DMD and fake-score losses against float64 references written from the formulas.

Each reference re-draws the loss's randomness from a generator with the same seed, in the order the
loss documents, evaluates the formula literally (torch.func.jvp for the tangent, DESIGN.md's
rectified-flow wrapping) and is compared on the loss value and the gradient of the trained network.
"""

from __future__ import annotations

import math

import pytest
import torch
from distill_testkit import assert_close, col, rf_reference, rf_reference_cfg
from rcm_plugins.distill.dcm import DcmConfig, DcmLoss
from rcm_plugins.distill.dmd import DmdConfig, DmdLoss
from rcm_plugins.distill.fake_score_dsm import FakeScoreDsmConfig, FakeScoreDsmLoss
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from rcm_plugins.distill.scm import ScmConfig, ScmLoss, consistency_target
from torch import Tensor, nn

from rcm_registry.testing.fixtures import HALF_PI, FixedTimes, TinyNet, step_context

B = 6
TIMES = [0.05, 0.3, 0.7, 1.0, 1.3, 1.52]
W = 3.0  # teacher guidance


def _setup(seed: int = 0) -> tuple[Tensor, dict[str, nn.Module], RectifiedFlowTeacher]:
    x0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    nets = {"student": TinyNet(seed=1), "teacher": TinyNet(seed=2), "fake_score": TinyNet(seed=3)}
    nets["teacher"].requires_grad_(False)
    return x0, nets, RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0, guidance=W))


def _grads(net: nn.Module, loss: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(net.parameters())))


def _compare_grads(got: list[Tensor], ref: list[Tensor], rel: float) -> None:
    for g, r in zip(got, ref, strict=True):
        assert_close(g, r, rel, "gradient")


def _conds(ctx: object) -> tuple[dict, dict]:
    return ctx.batch.condition, ctx.batch.null_condition


# -- sCM ----------------------------------------------------------------------------------------------
def _scm_reference(
    ctx: object,
    nets: dict,
    t: Tensor,
    iteration: int,
    warmup: int,
    semi: bool = False,
    h: float = 1e-4,
    warmup_scales: str = "tangent",
) -> Tensor:
    """Per-sample sCM loss, literally from DESIGN.md (``x_t_term``) or sCM's Algorithm 1 (``tangent``)."""
    x0 = ctx.batch.x0
    cond, null = _conds(ctx)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    c, s = torch.cos(col(t, x0)), torch.sin(col(t, x0))
    x_t = c * x0 + s * eps
    with torch.no_grad():
        _, F_T = rf_reference_cfg(nets["teacher"], x_t, t, cond, null, W)

    def F_student(x: Tensor, tt: Tensor) -> Tensor:
        return rf_reference(nets["student"], x, tt, cond)[1]

    with torch.no_grad():
        if semi:
            F_minus, dF = torch.func.jvp(F_student, (x_t, t), (c * s * F_T, torch.zeros_like(t)))
            dF = dF + c * s * (F_student(x_t, t) - F_student(x_t, t - h)) / h
        else:
            F_minus, dF = torch.func.jvp(F_student, (x_t, t), (c * s * F_T, torch.cos(t) * torch.sin(t)))
    r = min(1.0, iteration / warmup) if warmup else 1.0
    if warmup_scales == "tangent":
        g = -c * torch.sqrt(1 - r**2 * s**2) * (F_minus - F_T) - r * (c * s * x_t + dF)
    else:
        g = -c * torch.sqrt(1 - r**2 * s**2) * (F_minus - F_T) - (r * c * s * x_t + dF)
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    F_theta = F_student(x_t, t)
    return ((F_theta - F_theta.detach() - g) ** 2).sum(dim=1)


@pytest.mark.parametrize("tangent_pass", ["separate", "fused"])
@pytest.mark.parametrize("warmup_scales", ["tangent", "x_t_term"])
@pytest.mark.parametrize(("iteration", "reduction"), [(0, "mean"), (40, "sum"), (500, "mean")])
def test_scm_matches_reference(iteration: int, reduction: str, warmup_scales: str, tangent_pass: str) -> None:
    x0, nets, wrapper = _setup()
    t = torch.tensor(TIMES, dtype=torch.float64)
    ctx = step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)}, iteration=iteration)
    config = ScmConfig(
        weight=2.0, reduction=reduction, tangent_warmup=100, warmup_scales=warmup_scales, tangent_pass=tangent_pass
    )
    out = ScmLoss(config)(ctx)
    per = _scm_reference(ctx, nets, t, iteration, 100, warmup_scales=warmup_scales)
    ref = 2.0 * (per.mean() if reduction == "mean" else per.sum())
    assert_close(out.loss, ref, 1e-10, "loss")
    _compare_grads(_grads(nets["student"], out.loss), _grads(nets["student"], ref), 1e-9)
    assert out.metrics["nan_masked"] == 0.0
    assert out.metrics["warmup_ratio"] == min(1.0, iteration / 100)
    assert all(p.grad is None for p in nets["teacher"].parameters())


def _g_by_hand(F_minus: list, F_T: list, dF: list, x_t: list, t: list, r: float, warmup_scales: str) -> list:
    """g of DESIGN.md (x_t_term) or sCM's Algorithm 1 (tangent), one element at a time in Python floats."""
    rows = []
    for b, tb in enumerate(t):
        c, s = math.cos(tb), math.sin(tb)
        row = []
        for fm, ft, df, x in zip(F_minus[b], F_T[b], dF[b], x_t[b], strict=True):
            anchor = -c * math.sqrt(1.0 - r * r * s * s) * (fm - ft)
            tangent = r * (c * s * x + df) if warmup_scales == "tangent" else r * c * s * x + df
            row.append(anchor - tangent)
        rows.append(row)
    return rows


@pytest.mark.parametrize("warmup_scales", ["tangent", "x_t_term"])
@pytest.mark.parametrize("r", [0.0, 0.37, 1.0])
def test_consistency_target_matches_hand_computation(warmup_scales: str, r: float) -> None:
    gen = torch.Generator().manual_seed(11)
    F_minus, F_T, dF, x_t = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    t = torch.rand(5, generator=gen, dtype=torch.float64) * HALF_PI
    got = consistency_target(F_minus, F_T, dF, x_t, t, r, warmup_scales)
    want = _g_by_hand(*(v.tolist() for v in (F_minus, F_T, dF, x_t, t)), r, warmup_scales)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=1e-14)


def test_warmup_placements_differ_only_while_warming_up() -> None:
    gen = torch.Generator().manual_seed(12)
    F_minus, F_T, dF, x_t = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    t = torch.rand(4, generator=gen, dtype=torch.float64) * HALF_PI
    both = [consistency_target(F_minus, F_T, dF, x_t, t, 0.5, w) for w in ("tangent", "x_t_term")]
    # At r = 0.5 they differ by (1 − r)·dF_θ⁻ exactly: the release keeps the whole JVP term.
    assert torch.allclose(both[0] - both[1], 0.5 * dF, rtol=1e-14, atol=1e-14)
    ones = [consistency_target(F_minus, F_T, dF, x_t, t, 1.0, w) for w in ("tangent", "x_t_term")]
    assert torch.equal(ones[0], ones[1])


def test_scm_semi_continuous_matches_reference_and_approximates_jvp() -> None:
    x0, nets, wrapper = _setup(1)
    t = torch.tensor(TIMES, dtype=torch.float64)
    semi = ScmLoss(ScmConfig(semi_continuous=True))
    out = semi(step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)}, iteration=0))
    ctx = step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)}, iteration=0)
    ref = _scm_reference(ctx, nets, t, 0, 0, semi=True).mean()
    assert_close(out.loss, ref, 1e-9, "semi-continuous loss")
    g_semi = _grads(nets["student"], out.loss)
    _compare_grads(g_semi, _grads(nets["student"], ref), 1e-8)
    exact = ScmLoss(ScmConfig())(step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)}))
    g_exact = _grads(nets["student"], exact.loss)
    for a, b in zip(g_semi, g_exact, strict=True):
        assert_close(a, b, 1e-2, "finite difference ≈ time tangent")


def test_scm_semi_continuous_uses_forward_point_for_tiny_t() -> None:
    x0, nets, wrapper = _setup(2)
    t = torch.full((B,), 5e-5, dtype=torch.float64)  # below h = 1e-4: t − h would be negative
    out = ScmLoss(ScmConfig(semi_continuous=True))(
        step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)})
    )
    assert torch.isfinite(out.loss) and out.metrics["nan_masked"] == 0.0


class NanForFirst(nn.Module):
    """Wraps a network and poisons sample 0 of its output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, timestep: Tensor, **cond: Tensor) -> Tensor:
        y = self.net(x, timestep, **cond)
        poison = torch.zeros_like(y)
        poison[0] = float("nan")
        return y + poison


def test_scm_masks_and_counts_nan_samples() -> None:
    x0, nets, wrapper = _setup(3)
    t = torch.tensor(TIMES, dtype=torch.float64)
    clean = dict(nets)
    nets = {**nets, "teacher": NanForFirst(nets["teacher"])}
    out = ScmLoss(ScmConfig(reduction="sum"))(step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)}))
    assert out.metrics["nan_masked"] == 1.0
    assert torch.isfinite(out.loss)
    grads = _grads(nets["student"], out.loss)
    assert all(torch.isfinite(g).all() for g in grads)
    ctx = step_context(x0, clean, teacher=wrapper, time={"student": FixedTimes(t)})
    ref = _scm_reference(ctx, clean, t, 0, 0)[1:].sum()
    assert_close(out.loss, ref, 1e-10, "masked loss = sum over the clean samples")
    _compare_grads(grads, _grads(clean["student"], ref), 1e-9)


def test_scm_masks_a_nan_data_sample_without_poisoning_the_gradients() -> None:
    """A NaN in the data reaches the student's input; masking its loss term alone left every gradient
    NaN (0·NaN in the backward pass), so the input is zeroed for that sample too."""
    x0, nets, wrapper = _setup(3)
    t = torch.tensor(TIMES, dtype=torch.float64)
    poisoned = x0.clone()
    poisoned[0, 0] = float("nan")
    ctx = step_context(poisoned, nets, teacher=wrapper, time={"student": FixedTimes(t)})
    out = ScmLoss(ScmConfig(reduction="sum"))(ctx)
    assert out.metrics["nan_masked"] == 1.0 and torch.isfinite(out.loss)
    grads = _grads(nets["student"], out.loss)
    assert all(torch.isfinite(g).all() for g in grads)
    clean = step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(t)})
    ref = _scm_reference(clean, nets, t, 0, 0)[1:].sum()
    assert_close(out.loss, ref, 1e-10, "masked loss = sum over the other samples")
    _compare_grads(grads, _grads(nets["student"], ref), 1e-9)


def test_scm_guidance_without_null_condition_is_an_error() -> None:
    x0, nets, wrapper = _setup()
    ctx = step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(TIMES)}, null=False)
    with pytest.raises(RuntimeError, match="null_condition"):
        ScmLoss(ScmConfig())(ctx)
    # guidance 1 needs none
    assert torch.isfinite(ScmLoss(ScmConfig(guidance=1.0))(ctx).loss)


# -- dCM ----------------------------------------------------------------------------------------------
def test_dcm_matches_reference() -> None:
    x0, nets, wrapper = _setup(4)
    x0 = torch.cat([x0, x0 * 0.5, -x0])  # 18 samples: k = 1 (the t' = 0 boundary) is drawn too
    n, steps, shift, sigma_max = x0.shape[0], 4, 3.0, 80.0
    ctx = step_context(x0, nets, teacher=wrapper)
    out = DcmLoss(DcmConfig(steps=steps, shift=shift, sigma_max=sigma_max, reduction="sum"))(ctx)

    gen = torch.Generator().manual_seed(7)
    k = torch.randint(1, steps + 1, (n,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    assert (k == 1).any() and (k > 1).any()
    frac = torch.arange(steps + 1, dtype=torch.float64) / steps
    u = sigma_max / (1 + sigma_max) * shift * frac / (1 + (shift - 1) * frac)  # shifted RF time
    grid = torch.atan2(u, 1 - u)
    t, t_prev = grid[k], grid[k - 1]
    cond, null = _conds(ctx)
    x_t = torch.cos(col(t, x0)) * x0 + torch.sin(col(t, x0)) * eps
    with torch.no_grad():
        _, F_T = rf_reference_cfg(nets["teacher"], x_t, t, cond, null, W)
        x_prev = x_t + col(t_prev - t, x0) * F_T  # Euler step of dx/dt = F_T from t to t'
        safe = torch.where(t_prev > 0, t_prev, grid[1])
        target = rf_reference(nets["student"], x_prev, safe, cond)[0]
        target = torch.where(col(t_prev > 0, x0), target, x_prev)  # f(x, 0) = x
    pred = rf_reference(nets["student"], x_t, t, cond)[0]
    ref = ((pred - target) ** 2).sum()
    assert_close(out.loss, ref, 1e-10, "loss")
    _compare_grads(_grads(nets["student"], out.loss), _grads(nets["student"], ref), 1e-9)


# -- DMD and the critic -------------------------------------------------------------------------------
def _rollout_stub(net: nn.Module) -> object:
    """x̂0 = a differentiable function of the student, without touching the generator."""
    z = torch.randn(B, 2, generator=torch.Generator().manual_seed(55), dtype=torch.float64)

    def rollout(ctx: object, *, grad: bool) -> Tensor:
        with torch.set_grad_enabled(grad):
            return net(z, torch.full((B,), 900.0, dtype=torch.float64), **ctx.batch.condition)

    return rollout


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dmd_matches_reference(reduction: str) -> None:
    x0, nets, wrapper = _setup(5)
    t = torch.tensor(TIMES, dtype=torch.float64)
    rollout = _rollout_stub(nets["student"])
    ctx = step_context(x0, nets, teacher=wrapper, time={"critic": FixedTimes(t)}, rollout=rollout)
    out = DmdLoss(DmdConfig(weight=0.5, reduction=reduction))(ctx)

    cond, null = _conds(ctx)
    x_hat = rollout(ctx, grad=True)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    with torch.no_grad():
        x_t = torch.cos(col(t, x0)) * x_hat + torch.sin(col(t, x0)) * eps
        x0_fake, _ = rf_reference(nets["fake_score"], x_t, t, cond)
        x0_teacher, _ = rf_reference_cfg(nets["teacher"], x_t, t, cond, null, W)
        w = (x_hat - x0_teacher).abs().mean(dim=1, keepdim=True).clamp(min=1e-5)
    per = ((x_hat - (x_hat - (x0_fake - x0_teacher) / w).detach()) ** 2).sum(dim=1)
    ref = 0.5 * (per.mean() if reduction == "mean" else per.sum())
    assert_close(out.loss, ref, 1e-10, "loss")
    _compare_grads(_grads(nets["student"], out.loss), _grads(nets["student"], ref), 1e-9)
    assert all(p.grad is None for p in nets["fake_score"].parameters())


def test_dmd_masks_nan_samples() -> None:
    x0, nets, wrapper = _setup(6)
    nets = {**nets, "fake_score": NanForFirst(nets["fake_score"])}
    rollout = _rollout_stub(nets["student"])
    ctx = step_context(x0, nets, teacher=wrapper, time={"critic": FixedTimes(TIMES)}, rollout=rollout)
    out = DmdLoss(DmdConfig())(ctx)
    assert out.metrics["nan_masked"] == 1.0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(g).all() for g in _grads(nets["student"], out.loss))


@pytest.mark.parametrize("which", ["dcm", "fake_score_dsm"])
def test_a_nan_input_sample_is_masked_with_finite_gradients(which: str) -> None:
    x0, nets, wrapper = _setup(6)
    if which == "dcm":
        x0[0, 1] = float("nan")  # from the data
        trained, loss = "student", DcmLoss(DcmConfig(steps=4))
    else:
        nets = {**nets, "student": NanForFirst(nets["student"])}  # the student's sample 0 is NaN
        trained, loss = "fake_score", FakeScoreDsmLoss(FakeScoreDsmConfig())
    rollout = _rollout_stub(nets["student"])
    ctx = step_context(x0, nets, teacher=wrapper, time={"critic": FixedTimes(TIMES)}, rollout=rollout, trained=trained)
    out = loss(ctx)
    assert out.metrics["nan_masked"] == 1.0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(g).all() for g in _grads(nets[trained], out.loss))


def test_fake_score_dsm_matches_reference() -> None:
    x0, nets, wrapper = _setup(7)
    t = torch.tensor(TIMES, dtype=torch.float64)
    rollout = _rollout_stub(nets["student"])
    ctx = step_context(x0, nets, teacher=wrapper, time={"critic": FixedTimes(t)}, rollout=rollout, trained="fake_score")
    out = FakeScoreDsmLoss(FakeScoreDsmConfig(weight=1.5))(ctx)
    assert out.loss.grad_fn is not None
    cond, _ = _conds(ctx)
    with torch.no_grad():
        x_hat = rollout(ctx, grad=False)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    x_t = torch.cos(col(t, x0)) * x_hat + torch.sin(col(t, x0)) * eps
    x0_fake, _ = rf_reference(nets["fake_score"], x_t, t, cond)
    ref = 1.5 * (((x_hat - x0_fake) ** 2).sum(dim=1) / torch.sin(t) ** 2).mean()
    assert_close(out.loss, ref, 1e-10, "loss")
    _compare_grads(_grads(nets["fake_score"], out.loss), _grads(nets["fake_score"], ref), 1e-9)
    assert all(p.grad is None for p in nets["student"].parameters())


# -- a network gone non-finite is not masked away -------------------------------------------------------
class AllNan(nn.Module):
    """Wraps a network and makes its whole output NaN, as after a critic step with an infinite gradient."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, timestep: Tensor, **cond: Tensor) -> Tensor:
        return self.net(x, timestep, **cond) * float("nan")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dead_fake_score_gives_nan_losses(reduction: str) -> None:
    """Regression: with every sample masked the critic and DMD losses were 0, so a rCM run whose fake
    score had gone NaN trained on as plain sCM without any error."""
    x0, nets, wrapper = _setup(8)
    nets = {**nets, "fake_score": AllNan(nets["fake_score"])}
    time = {"critic": FixedTimes(TIMES)}
    rollout = _rollout_stub(nets["student"])
    ctx = step_context(x0, nets, teacher=wrapper, time=time, rollout=rollout, trained="fake_score")
    critic = FakeScoreDsmLoss(FakeScoreDsmConfig(reduction=reduction))(ctx)
    assert critic.metrics["nan_masked"] == B and torch.isnan(critic.loss)
    ctx = step_context(x0, nets, teacher=wrapper, time=time, rollout=rollout)
    dmd = DmdLoss(DmdConfig(reduction=reduction))(ctx)
    assert dmd.metrics["nan_masked"] == B and torch.isnan(dmd.loss)


def test_all_masked_scm_and_dcm_losses_are_nan() -> None:
    x0, nets, wrapper = _setup(9)
    nets = {**nets, "teacher": AllNan(nets["teacher"])}
    scm = ScmLoss(ScmConfig())(step_context(x0, nets, teacher=wrapper, time={"student": FixedTimes(TIMES)}))
    assert scm.metrics["nan_masked"] == B and torch.isnan(scm.loss)
    dcm = DcmLoss(DcmConfig(steps=4))(step_context(x0, nets, teacher=wrapper))
    assert dcm.metrics["nan_masked"] == B and torch.isnan(dcm.loss)
