"""Tiny stand-ins for what the engine hands to components, for tests of losses, rollouts and samplers.

Everything here is small, float64 and seeded, so a test built on it runs in milliseconds, compares
results bitwise where the component is deterministic, and gives the same numbers on every machine:

* :class:`TinyNet`: a label-conditioned MLP shaped like its input, smooth in every input (JVPs and
  finite differences agree), with an extra embedding row :data:`NULL_LABEL` for the CFG branch.
* :class:`FixedTimes`: a time sampler that returns given times, to replay a loss by hand.
* :func:`step_context`: a :class:`~rcm_registry.engine.context.StepContext` around a batch of points
  with labels; :func:`tiny_step_context`: one with everything a distillation loss may read (teacher,
  student and fake-score networks, a teacher wrapper, a schedule, time samplers and a rollout).
* :func:`sharded`: the context one data-parallel rank would see, to check a component splits its
  batch the way the engine does.
* :func:`tiny_sample_context`: a :class:`~rcm_registry.engine.context.SampleContext` for samplers.

The components the contexts hold are built through the registry by name (``rectified_flow``,
``lognormal``, ...), exactly as a recipe would build them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry.engine.context import BatchShard, SampleContext, StepContext
from rcm_registry.protocols import Batch

HALF_PI = math.pi / 2
#: Class labels of :class:`TinyNet` are 0 .. NUM_LABELS − 1; NULL_LABEL is the unconditional one.
NUM_LABELS = 3
NULL_LABEL = NUM_LABELS

#: The network roles of :func:`tiny_step_context`, each a :class:`TinyNet` with its own seed.
ROLES: tuple[str, ...] = ("teacher", "student", "fake_score")

#: What :func:`tiny_step_context` and :func:`tiny_sample_context` build, as recipe sections.
TEACHER_WRAPPER: dict[str, Any] = {"use": "rectified_flow", "t_scale": 1000.0, "guidance": 2.0}
SCHEDULE: dict[str, Any] = {"use": "rectified_flow", "time_scale": 1000.0}
TIME: dict[str, dict[str, Any]] = {
    "student": {"use": "lognormal", "mean": -0.8, "std": 1.6},
    "critic": {"use": "uniform_shift", "shift": 2.0},
}
ROLLOUT: dict[str, Any] = {"use": "stochastic_backward", "max_steps": 2}


def build(kind: str, section: Mapping[str, Any]) -> Any:
    """The registered component of a recipe section ``{use: NAME, ...config}``."""
    config = dict(section)
    return rr.registry().build(kind, config.pop("use"), **config)


class TinyNet(nn.Module):
    """MLP ``f(x, timestep, label)`` shaped like ``x``; smooth in every input (so JVPs and FDs agree).

    ``x`` is (B, ...) with ``dim`` elements per sample; ``timestep`` (B,) in the network's units
    (0–1000 for a rectified-flow teacher wrapper); ``label`` (B,) in 0 .. NUM_LABELS, NULL_LABEL
    being the unconditional branch. Every parameter is drawn from ``seed``.
    """

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(NUM_LABELS + 1, hidden, dtype=dtype)
        self.inp = nn.Linear(dim + 3, hidden, dtype=dtype)
        self.mid = nn.Linear(hidden, hidden, dtype=dtype)
        self.out = nn.Linear(hidden, dim, dtype=dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)

    def forward(self, x: Tensor, timestep: Tensor, label: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        ts = timestep.to(flat.dtype)[:, None]
        feats = torch.cat([flat, ts / 1000.0, torch.sin(ts * 0.003), torch.cos(ts * 0.002)], dim=1)
        h = torch.nn.functional.silu(self.inp(feats))
        if label is not None:
            h = h + self.embed(label)
        h = torch.tanh(self.mid(h))
        return self.out(h).reshape(x.shape)


class FixedTimes:
    """A time sampler that returns given times (cycling through a list of batches); ignores the generator."""

    def __init__(self, *times: Sequence[float] | Tensor) -> None:
        self.times = [torch.as_tensor(t, dtype=torch.float64) for t in times]
        self.calls = 0

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = self.times[self.calls % len(self.times)]
        self.calls += 1
        return t.expand(n).clone() if t.dim() == 0 else t[:n].clone()


def labelled_batch(x0: Tensor, labels: Tensor | None = None, *, null: bool = True) -> Batch:
    """``x0`` with ``{"label": labels}`` (default: 0, 1, 2, 0, ...) and, with ``null``, the NULL_LABEL branch."""
    labels = labels if labels is not None else torch.arange(x0.shape[0]) % NUM_LABELS
    return Batch(
        x0=x0,
        condition={"label": labels},
        null_condition={"label": torch.full_like(labels, NULL_LABEL)} if null else None,
    )


def step_context(
    x0: Tensor,
    nets: Mapping[str, nn.Module],
    *,
    teacher: Any = None,
    schedule: Any = None,
    time: Mapping[str, Any] | None = None,
    rollout: Any = None,
    labels: Tensor | None = None,
    null: bool = True,
    iteration: int = 0,
    seed: int = 7,
    trained: str = "student",
    phase_step: int = 0,
) -> StepContext:
    """A step context around :func:`labelled_batch` ``(x0, labels, null=null)`` with a generator seeded ``seed``."""
    return StepContext(
        batch=labelled_batch(x0, labels, null=null),
        nets=dict(nets),
        trained=trained,
        iteration=iteration,
        phase_step=phase_step,
        generator=torch.Generator().manual_seed(seed),
        schedule=schedule,
        teacher=teacher,
        time=dict(time or {}),
        rollout=rollout,
    )


def tiny_nets(dim: int = 2, roles: Sequence[str] = ROLES) -> dict[str, TinyNet]:
    """One :class:`TinyNet` per role, seeded 1, 2, 3, ... in role order (so every role computes differently)."""
    return {role: TinyNet(dim=dim, seed=i + 1) for i, role in enumerate(roles)}


def tiny_step_context(
    seed: int = 0, *, batch_size: int = 6, trained: str = "student", iteration: int = 0
) -> StepContext:
    """A step context with everything a distillation loss may read, all tiny and seeded.

    ``batch_size`` 2-D float64 points drawn from ``seed``, labels 0, 1, 2, ... with a null condition;
    :func:`tiny_nets` as ``teacher``, ``student`` and ``fake_score``, with gradients on (as for every
    role some phase trains); the teacher wrapper, schedule, time samplers and rollout of
    :data:`TEACHER_WRAPPER`, :data:`SCHEDULE`, :data:`TIME` and :data:`ROLLOUT`; the step generator
    seeded ``seed``. Two calls with one seed give equal contexts with fresh networks.
    """
    x0 = torch.randn(batch_size, 2, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    return step_context(
        x0,
        tiny_nets(),
        teacher=build("teacher", TEACHER_WRAPPER),
        schedule=build("schedule", SCHEDULE),
        time={role: build("time_sampler", section) for role, section in TIME.items()},
        rollout=build("rollout", ROLLOUT),
        iteration=iteration,
        seed=seed,
        trained=trained,
    )


def sharded(ctx: StepContext, index: int, count: int) -> StepContext:
    """``ctx`` as data-parallel rank ``index`` of ``count`` sees it: its rows of the batch, and draws for
    the whole batch sliced to them (the step context's and the time samplers'), as the engine sets it up.

    The generator is shared with ``ctx``: give each rank a context of its own with the same seed.
    """
    shard = BatchShard(index=index, count=count, size=ctx.batch.x0.shape[0])
    return attrs.evolve(
        ctx,
        batch=shard.batch(ctx.batch),
        time={role: shard.sampler(sampler) for role, sampler in ctx.time.items()},
        shard=shard,
    )


def tiny_sample_context(seed: int = 0, *, num: int = 6, net: nn.Module | None = None) -> SampleContext:
    """A sample context for ``num`` 2-D samples of a :class:`TinyNet` (float64), labels 0, 1, 2, ... with a
    null condition, the schedule and teacher wrapper of :data:`SCHEDULE` and :data:`TEACHER_WRAPPER`, and
    a generator seeded ``seed``."""
    batch = labelled_batch(torch.zeros(num, 2, dtype=torch.float64))
    return SampleContext(
        net=net if net is not None else TinyNet(seed=1),
        shape=(num, 2),
        condition=batch.condition,
        null_condition=batch.null_condition,
        generator=torch.Generator().manual_seed(seed),
        schedule=build("schedule", SCHEDULE),
        teacher=build("teacher", TEACHER_WRAPPER),
        dtype=torch.float64,
    )


def rel_err(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    return ((a64 - b64).norm() / b64.norm()).item()
