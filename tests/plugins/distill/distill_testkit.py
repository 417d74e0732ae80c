"""Small float64 networks, fixed time samplers and hand-written TrigFlow formulas for the distill tests.

The reference formulas here are written from the math (DESIGN.md, "The math") in their textbook form,
not in the rearranged forms the components use, so a test compares two independent derivations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rcm_registry.engine.context import StepContext
from rcm_registry.protocols import Batch

NUM_LABELS = 3
NULL_LABEL = NUM_LABELS  # the extra embedding row is the unconditional label


class TinyNet(nn.Module):
    """MLP f(x, timestep, label) shaped like x; smooth in every input (so JVPs and FDs agree)."""

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


def make_ctx(
    x0: Tensor,
    nets: dict[str, nn.Module],
    *,
    teacher: object,
    time: dict[str, object] | None = None,
    rollout: object = None,
    labels: Tensor | None = None,
    null: bool = True,
    iteration: int = 0,
    seed: int = 7,
    trained: str = "student",
) -> StepContext:
    labels = labels if labels is not None else torch.arange(x0.shape[0]) % NUM_LABELS
    batch = Batch(
        x0=x0,
        condition={"label": labels},
        null_condition={"label": torch.full_like(labels, NULL_LABEL)} if null else None,
    )
    return StepContext(
        batch=batch,
        nets=nets,
        trained=trained,
        iteration=iteration,
        generator=torch.Generator().manual_seed(seed),
        teacher=teacher,
        time=time or {},
        rollout=rollout,
    )


def col(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def rf_reference(net: nn.Module, x_t: Tensor, t: Tensor, cond: dict, t_scale: float = 1000.0) -> tuple[Tensor, Tensor]:
    """DESIGN.md's rectified-flow wrapping, literally: s, c_in, x0 = c_in·x_t − s·v, F = (cos t·x_t − x0)/sin t."""
    c, s = torch.cos(col(t, x_t)), torch.sin(col(t, x_t))
    s_rf = s / (c + s)
    c_in = 1.0 / (c + s)
    v = net(c_in * x_t, t_scale * (torch.sin(t) / (torch.cos(t) + torch.sin(t))), **cond)
    x0 = c_in * x_t - s_rf * v
    F = (c * x_t - x0) / s
    return x0, F


def rf_reference_cfg(net: nn.Module, x_t: Tensor, t: Tensor, cond: dict, null: dict, w: float) -> tuple[Tensor, Tensor]:
    """CFG in F: F = F_u + w·(F_c − F_u); x0 from F."""
    _, F_c = rf_reference(net, x_t, t, cond)
    _, F_u = rf_reference(net, x_t, t, null)
    F = F_u + w * (F_c - F_u)
    return torch.cos(col(t, x_t)) * x_t - torch.sin(col(t, x_t)) * F, F


def assert_close(a: Tensor, b: Tensor, rel: float, what: str = "") -> None:
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-30)
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} vs scale {scale:.3e} (rel {err / scale:.3e} > {rel})"


HALF_PI = math.pi / 2
