"""``flow_matching`` against a hand evaluation that replays the documented draws in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rcm_registry as rr
from rcm_registry.engine.context import StepContext
from rcm_registry.protocols import Batch
from rcm_registry.recipe.validate import validate_recipe

B, K = 64, 8


class Recorder(nn.Module):
    """A fixed smooth function of (x, timestep, label) that remembers its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[0.3, -1.2], [0.7, 0.4]], dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.detach().clone(), timestep.detach().clone(), None if label is None else label.clone()))
        offset = 0.0 if label is None else 0.1 * label.to(x.dtype)[:, None]
        return x @ self.w + torch.sin(timestep.to(x.dtype))[:, None] + offset


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def _batch(labels: bool = True) -> Batch:
    g = torch.Generator().manual_seed(123)
    x0 = torch.randn((B, 2), generator=g, dtype=torch.float64)
    if not labels:
        return Batch(x0=x0)
    label = torch.randint(K, (B,), generator=g)
    return Batch(x0=x0, condition={"label": label}, null_condition={"label": torch.full((B,), K)})


def _ctx(registry: rr.Registry, schedule: str, batch: Batch, seed: int, net: nn.Module) -> StepContext:
    return StepContext(
        batch=batch,
        nets={"teacher": net},
        trained="teacher",
        iteration=0,
        generator=torch.Generator().manual_seed(seed),
        schedule=registry.build("schedule", schedule),
    )


@pytest.mark.parametrize("schedule", ["rectified_flow", "trigflow"])
def test_loss_matches_hand_evaluation(registry: rr.Registry, schedule: str) -> None:
    shift, dropout, weight = 3.0, 0.5, 2.5
    loss = registry.build(
        "loss", "flow_matching", time={"use": "uniform_shift", "shift": shift}, cond_dropout=dropout, weight=weight
    )
    batch = _batch()
    net = Recorder()
    out = loss(_ctx(registry, schedule, batch, seed=7, net=net))

    # Replay: t from the time sampler, then ε, then one dropout draw per sample, all from one generator.
    g = torch.Generator().manual_seed(7)
    r = torch.rand(B, generator=g, dtype=torch.float64)
    u_shifted = shift * r / (1 + (shift - 1) * r)
    t = torch.atan2(u_shifted, 1 - u_shifted).clamp(1e-4, math.pi / 2 - 1e-4)
    eps = torch.randn((B, 2), generator=g, dtype=torch.float64)
    drop = torch.rand(B, generator=g, dtype=torch.float64) < dropout
    x0 = batch.x0
    if schedule == "rectified_flow":
        u = torch.sin(t) / (torch.cos(t) + torch.sin(t))
        x_u = (1 - u)[:, None] * x0 + u[:, None] * eps
        target = eps - x0
        timestep = 1000 * u
    else:
        x_u = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * eps
        target = -torch.sin(t)[:, None] * x0 + torch.cos(t)[:, None] * eps
        timestep = t
    label = torch.where(drop, torch.full_like(batch.condition["label"], K), batch.condition["label"])
    prediction = x_u @ net.w.detach() + torch.sin(timestep)[:, None] + 0.1 * label.double()[:, None]
    mse = ((prediction - target) ** 2).mean()

    ((seen_x, seen_t, seen_label),) = net.calls
    torch.testing.assert_close(seen_x, x_u, rtol=0, atol=1e-14)
    torch.testing.assert_close(seen_t, timestep, rtol=1e-15, atol=1e-12)
    assert torch.equal(seen_label, label) and 10 < int(drop.sum()) < B - 10
    torch.testing.assert_close(out.loss, weight * mse, rtol=1e-13, atol=0)
    assert out.metrics["mse"] == pytest.approx(mse.item(), rel=1e-13)
    out.loss.backward()
    assert net.w.grad is not None and bool(torch.isfinite(net.w.grad).all())


def test_no_dropout_without_null_condition_or_rate(registry: rr.Registry) -> None:
    batch = _batch()
    net = Recorder()
    registry.build("loss", "flow_matching", cond_dropout=0.0)(_ctx(registry, "rectified_flow", batch, 0, net))
    assert torch.equal(net.calls[-1][2], batch.condition["label"])
    everything = registry.build("loss", "flow_matching", cond_dropout=1.0)
    everything(_ctx(registry, "rectified_flow", batch, 0, net))
    assert bool((net.calls[-1][2] == K).all())
    unlabelled = _batch(labels=False)
    everything(_ctx(registry, "rectified_flow", unlabelled, 0, net))
    assert net.calls[-1][2] is None


def test_float32_data_gets_float32_timesteps(registry: rr.Registry) -> None:
    batch = Batch(x0=_batch().x0.float())
    net = Recorder().float()
    registry.build("loss", "flow_matching")(_ctx(registry, "rectified_flow", batch, 0, net))
    assert net.calls[-1][1].dtype == torch.float32


def test_needs_a_schedule(registry: rr.Registry) -> None:
    ctx = StepContext(batch=_batch(), nets={"t": Recorder()}, trained="t", iteration=0, generator=torch.Generator())
    with pytest.raises(rr.UserError, match="needs a schedule"):
        registry.build("loss", "flow_matching")(ctx)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"cond_dropout": 1.5}, "cond_dropout: must be in [0.0, 1.0]"),
        ({"weight": -1.0}, "weight: must be >= 0"),
        ({"time": {"use": "uniform_shfit"}}, "did you mean 'uniform_shift'"),
        ({"time": {"use": "lognormal", "std": -1.0}}, "time.std: must be > 0"),
    ],
)
def test_bad_configs_are_reported(registry: rr.Registry, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("loss", "flow_matching", **config)
    assert fragment in str(info.value)


def test_recipe_without_schedule_is_reported(registry: rr.Registry) -> None:
    recipe = {
        "networks": {"teacher": {"use": "mlp", "num_classes": 8}},
        "phases": {"teacher": {"losses": [{"use": "flow_matching"}], "optimizer": {"use": "adamw", "lr": 1e-3}}},
        "data": {"use": "gaussian_mixture_2d", "labels": True},
        "run": {"iterations": 10},
    }
    with pytest.raises(rr.RecipeError) as info:
        validate_recipe(recipe, registry)
    assert info.value.problems == [
        "phases.teacher.losses[0] (flow_matching): needs a top-level `schedule:` to define x_u and the target "
        "(e.g. {use: rectified_flow})"
    ]
    validate_recipe({**recipe, "schedule": {"use": "rectified_flow"}}, registry)
