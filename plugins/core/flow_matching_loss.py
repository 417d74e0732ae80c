"""``flow_matching``: teacher pre-training by velocity regression, with label dropout for CFG."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.core._time import per_sample, timestep_dtype
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Batch, Condition, LossOutput


@attrs.define
class FlowMatchingConfig:
    #: Where training times come from (TrigFlow time; converted to the schedule's own time).
    time: schema.ComponentSpec = schema.component(  # noqa: RUF009 (returns an attrs.field)
        "time_sampler", default={"use": "uniform_shift", "shift": 1.0}
    )
    #: Probability that a sample's condition is replaced by the null condition (trains the CFG branch).
    cond_dropout: float = attrs.field(default=0.1, validator=schema.in_range(0.0, 1.0))
    #: Multiplies the loss (the logged ``mse`` is unweighted).
    weight: float = attrs.field(default=1.0, validator=[schema.non_negative, schema.finite])

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        """Problems with the rest of the recipe, reported by the recipe validator before anything is built."""
        if recipe.body.schedule is None:
            return ["needs a top-level `schedule:` to define x_u and the target (e.g. {use: rectified_flow})"]
        return []


class FlowMatchingLoss:
    """Flow matching in the recipe's schedule: L = weight · mean((v_θ(x_u, u, c) − (dα·x0 + dσ·ε))²).

    Per step, with the engine's generator, in this order: t ~ time sampler (TrigFlow), ε ~ N(0, I),
    then a uniform draw per sample for label dropout. With u = schedule.from_trigflow(t),
    ``x_u = α(u)·x0 + σ(u)·ε`` and the network sees ``schedule.network_time(u)``. A sample whose
    dropout draw is < ``cond_dropout`` gets ``batch.null_condition[k]`` for every key k the null
    condition has (no dropout when the batch has no null condition). The mean runs over all elements.
    """

    def __init__(self, config: FlowMatchingConfig) -> None:
        self.config = config
        self.time = config.time.build()

    def __call__(self, ctx: Any) -> LossOutput:
        schedule = ctx.schedule
        if schedule is None:
            raise rr.UserError("loss flow_matching needs a schedule: add `schedule: {use: ...}` to the recipe")
        x0: Tensor = ctx.batch.x0
        n = x0.shape[0]
        t = ctx.sample_times(self.time, n).to(x0.device)
        u = schedule.from_trigflow(t)
        alpha, sigma = schedule.alpha_sigma(u)
        d_alpha, d_sigma = schedule.velocity_coefficients(u)
        eps = ctx.randn_like(x0)
        x_u = per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * eps
        target = per_sample(d_alpha, x0) * x0 + per_sample(d_sigma, x0) * eps
        condition = self._dropped_condition(ctx.batch, ctx.rand(n).to(x0.device))
        timestep = schedule.network_time(u).to(device=x0.device, dtype=timestep_dtype(x0.dtype))
        prediction = ctx.net(ctx.trained)(x_u, timestep, **condition)
        dtype = torch.promote_types(prediction.dtype, torch.float32)  # bf16 outputs: reduce in float32
        mse = (prediction.to(dtype) - target.to(dtype)).square().mean()
        return LossOutput(loss=self.config.weight * mse, metrics={"mse": float(mse.detach())})

    def _dropped_condition(self, batch: Batch, draw: Tensor) -> Condition:
        null = batch.null_condition
        if null is None or self.config.cond_dropout <= 0.0:
            return dict(batch.condition)
        drop = draw < self.config.cond_dropout
        out: Condition = {}
        for key, value in batch.condition.items():
            if key not in null:
                out[key] = value
                continue
            mask = drop.reshape((-1,) + (1,) * (value.dim() - 1))
            out[key] = torch.where(mask, null[key].to(value.device), value)
        return out

    def __repr__(self) -> str:
        return f"FlowMatchingLoss(time={self.time!r}, cond_dropout={self.config.cond_dropout})"


COMPONENT = rr.Component(kind="loss", name="flow_matching", factory=FlowMatchingLoss, config=FlowMatchingConfig)
