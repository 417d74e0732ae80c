"""The teacher ODE samplers ``trigflow_euler`` and ``trigflow_unipc``: against references and exact solutions,
through the ``Sampler`` protocol (per-sample noise, step reports, guidance), and on a trained run via ``rcm sample``."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from rcm_plugins.core._time import shift_rf
from rcm_plugins.distill._teacher_ode import Solve, time_grid
from rcm_plugins.distill.dcm import consistency_grid
from rcm_plugins.distill.trigflow_euler import euler_solve
from rcm_plugins.distill.trigflow_unipc import unipc_solve
from safetensors.torch import load_file

import rcm_registry as rr
from rcm_registry.engine.context import SampleContext
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[3]


def test_trigflow_euler_is_the_flow_matching_euler_sampler() -> None:
    """On a rectified-flow teacher the TrigFlow step equals the core ``euler`` sampler's, CFG included."""
    reg = rr.registry()
    torch.manual_seed(0)
    net = reg.build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"}).double().eval()
    text = torch.randn(2, 5, 32, dtype=torch.float64)
    null = torch.zeros(2, 5, 32, dtype=torch.float64)
    steps, shift, guidance = 6, 3.0, 4.0
    schedule = reg.build("schedule", "rectified_flow", shift=shift, time_scale=1000.0)
    euler = reg.build("sampler", "euler", steps=steps, guidance=guidance)
    ctx = SampleContext(
        net=net,
        shape=(2, 16, 3, 4, 4),
        condition={"text": text},
        null_condition={"text": null},
        generator=torch.Generator().manual_seed(7),
        schedule=schedule,
        dtype=torch.float64,
    )
    with torch.no_grad():
        want = euler(ctx)
    wrapper = reg.build("teacher", "rectified_flow", t_scale=1000.0, guidance=guidance)
    trigflow_euler = reg.build("sampler", "trigflow_euler", steps=steps, shift=shift)  # guidance: the wrapper's
    ctx = attrs.evolve(ctx, generator=torch.Generator().manual_seed(7), schedule=None, teacher=wrapper)
    got = trigflow_euler(ctx)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def gaussian_denoiser(mu: float, sd: float):
    """The exact x̂0 for data ~ N(mu, sd²) in TrigFlow; its ODE solution is x_t = cos t·mu + √(cos²t·sd² + sin²t)·z."""

    def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
        c, s = math.cos(t), math.sin(t)
        return mu + c * sd**2 / (c * c * sd**2 + s * s) * (x - c * mu)

    return denoise


def test_unipc_is_diffusers_flow_unipc() -> None:
    """UniPC (bh2, order 2, data prediction) in TrigFlow equals diffusers' flow-matching UniPC, Wan's solver."""
    from diffusers import UniPCMultistepScheduler

    denoise = gaussian_denoiser(0.7, 0.3)
    steps = 10
    u = np.linspace(0.999, 0.0, steps + 1)[:-1]
    u = (3.0 * u / (1 + 2.0 * u)).astype(np.float32).astype(np.float64)  # shift 3, as diffusers holds them
    times = [math.atan2(v, 1 - v) for v in u] + [0.0]
    z = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = unipc_solve(denoise, z, times)

    scheduler = UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=2, predict_x0=True, solver_type="bh2"
    )
    scheduler.set_timesteps(sigmas=u.copy())
    x = (z / (math.cos(times[0]) + math.sin(times[0]))).float()  # the rectified-flow state
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        t = math.atan2(sigma, 1 - sigma)
        x0 = denoise(x.double() * (math.cos(t) + math.sin(t)), t)
        velocity = (x.double() - x0) / sigma
        x = scheduler.step(velocity.float(), timestep, x).prev_sample
    torch.testing.assert_close(got, x.double(), rtol=0, atol=1e-6)
    euler = euler_solve(denoise, z, times)
    assert (euler - got).abs().max() > 1e-2  # a different solver: the comparison can tell them apart


def test_unipc_converges_faster_than_euler() -> None:
    mu, sd = 0.7, 0.3
    denoise = gaussian_denoiser(mu, sd)
    z = torch.randn(256, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t0, t1 = 1.4, 0.2  # away from the ends, where λ = log cot t is unbounded
    exact = math.cos(t1) * mu + math.sqrt(math.cos(t1) ** 2 * sd**2 + math.sin(t1) ** 2) * z
    start = math.cos(t0) * mu + math.sqrt(math.cos(t0) ** 2 * sd**2 + math.sin(t0) ** 2) * z

    def error(solve: Solve, steps: int) -> float:
        lam = torch.linspace(math.log(1 / math.tan(t0)), math.log(1 / math.tan(t1)), steps + 1, dtype=torch.float64)
        times = torch.atan(torch.exp(-lam)).tolist()
        return (solve(denoise, start, times, lambda: None) - exact).abs().max().item()

    euler = [error(euler_solve, n) for n in (20, 40)]
    unipc = [error(unipc_solve, n) for n in (20, 40)]
    assert 1.8 < euler[0] / euler[1] < 2.2  # first order
    assert unipc[0] / unipc[1] > 4.0  # at least second order
    assert unipc[1] < euler[1] / 100


def test_time_grid() -> None:
    grid = time_grid(4, 1.0)
    assert grid[0] == pytest.approx(torch.pi / 2) and grid[-1] == 0.0 and len(grid) == 5
    assert grid == sorted(grid, reverse=True)
    capped = time_grid(50, 5.0, sigma_max=80.0)
    assert capped[0] == pytest.approx(float(torch.atan(torch.tensor(80.0)))) and len(capped) < 51


def test_dcm_grid_is_the_scaled_shift() -> None:
    """dCM's grid is u_k = s_max·shift·(k/N)/(1 + (shift − 1)·(k/N)) to the last bit, through shift_rf."""
    for steps, shift, sigma_max in ((32, 1.0, 80.0), (32, 3.0, 80.0), (40, 5.0, None), (7, 0.5, 10.0)):
        s_max = 1.0 if sigma_max is None else sigma_max / (1.0 + sigma_max)
        k = torch.arange(steps + 1, dtype=torch.float64) / steps
        u = s_max * shift * k / (1.0 + (shift - 1.0) * k)
        assert torch.equal(consistency_grid(steps, shift, sigma_max), torch.atan2(u, 1.0 - u))
        assert torch.equal(shift_rf(k, shift, scale=s_max), u)


def test_time_grid_is_the_shifted_uniform_grid() -> None:
    """The solver's grid is Wan's: uniform u from 1 to 0, shifted, in TrigFlow time (bit for bit)."""
    for steps, shift in ((50, 5.0), (10, 3.0), (7, 1.0)):
        want = []
        for i in range(steps + 1):
            u = 1.0 - i / steps
            u = shift * u / (1.0 + (shift - 1.0) * u)
            want.append(math.atan2(u, 1.0 - u))
        assert time_grid(steps, shift) == want


class ExactTeacher:
    """A teacher wrapper whose x̂0 is the exact denoiser of N(mu, sd²) data; counts calls and guidance."""

    guidance = 3.0

    def __init__(self, mu: float = 0.7, sd: float = 0.3) -> None:
        self.exact = gaussian_denoiser(mu, sd)
        self.calls: list[float | None] = []

    def denoise(
        self,
        net: torch.nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: dict,
        *,
        guidance: float | None = None,
        null_condition: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(guidance)
        x0 = self.exact(x_t, float(t[0]))
        return x0, (math.cos(float(t[0])) * x_t - x0) / math.sin(float(t[0]))


def context(teacher: ExactTeacher | None, n: int = 3, **extra: object) -> SampleContext:
    values = dict(
        net=torch.nn.Identity(),
        shape=(n, 4),
        condition={},
        null_condition={},
        generator=torch.Generator().manual_seed(0),
        teacher=teacher,
    )
    return SampleContext(**{**values, **extra})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["trigflow_euler", "trigflow_unipc"])
def test_samplers_draw_per_sample_noise_and_report_each_step(name: str) -> None:
    reg = rr.registry()
    sampler = reg.build("sampler", name, steps=6, shift=2.0)
    seeds = [11, 12, 13]

    def generators(which: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in which]

    steps: list[int] = []
    teacher = ExactTeacher()
    ctx = context(teacher, sample_generators=generators(seeds), on_step=lambda: steps.append(1))
    together = sampler(ctx)
    assert len(steps) == 6 and teacher.calls == [3.0] * 6  # the wrapper's guidance when the config has none
    assert together.dtype == torch.float32 and together.shape == (3, 4)
    alone = sampler(context(ExactTeacher(), n=1, sample_generators=generators(seeds[1:2])))
    assert torch.equal(alone[0], together[1])  # a sample's noise is its own, whatever its batch
    noise = torch.stack([torch.randn(4, generator=g) for g in generators(seeds)])
    assert torch.equal(context(None, sample_generators=generators(seeds)).randn(), noise)


def test_samplers_need_a_teacher_wrapper_and_a_null_condition_for_cfg() -> None:
    reg = rr.registry()
    sampler = reg.build("sampler", "trigflow_unipc", steps=2)
    with pytest.raises(rr.UserError, match="teacher_wrapper"):
        sampler(context(None))
    with pytest.raises(rr.UserError, match=r"guidance 3\.0 needs an unconditional"):
        sampler(context(ExactTeacher(), null_condition=None))
    teacher = ExactTeacher()
    reg.build("sampler", "trigflow_unipc", steps=2, guidance=1.0)(context(teacher, null_condition=None))
    assert teacher.calls == [1.0, 1.0]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [({"steps": 0}, "steps: must be > 0"), ({"shift": -1.0}, "shift: must be > 0"),
     ({"sigma_max": 0.0}, "sigma_max: must be > 0"),
     ({"guidance": float("nan")}, "guidance: nan is out of range for a float"),
     ({"guidance": -1.0}, "guidance: must be a finite CFG scale >= 0 .*1 is the conditional model alone")],
)  # fmt: skip
def test_bad_configs_are_reported(config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError, match=fragment):
        rr.registry().config("sampler", "trigflow_euler", **config)


def test_rcm_sample_runs_a_teacher_ode_sampler_on_a_trained_teacher(tmp_path: Path) -> None:
    """A quickstart teacher trained a few steps, sampled by ``rcm sample --sampler trigflow_euler``: the same
    samples as the core flow-matching ``euler`` on the same shifted grid."""
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(
        f"base: {ROOT / 'recipes/quickstart/teacher.yaml'}\n"
        "schedule: {use: rectified_flow, time_scale: 1.0, shift: 5.0}\n"
        "teacher_wrapper: {use: rectified_flow, t_scale: 1.0, guidance: 2.0}\n"
        "run: {iterations: 3, checkpoint_every: 3, log_every: 1}\n"
    )
    run = tmp_path / "run"
    trained = run_cli("run", str(recipe), "--out", str(run), "--no-progress")
    assert trained.code == 0, trained.err
    samples = {}
    for sampler in ("euler", "trigflow_euler"):
        out = tmp_path / f"{sampler}.safetensors"
        args = ["sample", str(run), "--sampler", sampler, "--steps", "20", "--num", "64", "--guidance", "2"]
        done = run_cli(*args, "--out", str(out))
        assert done.code == 0, done.err
        samples[sampler] = load_file(str(out))["samples"]
    assert samples["trigflow_euler"].shape == (64, 2)
    torch.testing.assert_close(samples["trigflow_euler"], samples["euler"], rtol=1e-4, atol=1e-4)
