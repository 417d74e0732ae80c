"""Shared pieces of the distillation components: the TrigFlow wrapper base, time draws, reductions.

Conventions (see ``rcm_registry.protocols``): TrigFlow time ``t`` is a float64 tensor of shape (B,),
``x_t = cos t·x0 + sin t·ε``, ``x0 = cos t·x_t − sin t·F``. All time and coefficient arithmetic is
done in float64 and only the final tensors are cast back to the data dtype.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from rcm_registry import schema as s
from rcm_registry.protocols import Condition

Reduction = Literal["mean", "sum"]

#: Which guidance scales w apply CFG: ``not_one`` (every w ≠ 1, so w in [0, 1) interpolates towards the
#: unconditional model) or ``above_one`` (only w > 1, as the rCM release's ``teacher_guidance > 1.0``
#: tests; a w <= 1 is then the conditional model alone).
GuidanceApplies = Literal["not_one", "above_one"]

HALF_PI = math.pi / 2


def expand(t: Tensor, x: Tensor) -> Tensor:
    """View per-sample values of shape (B,) as (B, 1, ..., 1) so they broadcast against ``x``."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def batch_times(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as float64 of shape (B,) on ``x``'s device (a scalar is repeated for every sample)."""
    t = torch.as_tensor(t, device=x.device).to(torch.float64)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"times must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def network_dtype(net: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The dtype a network computes in: that of its first floating-point parameter (else ``fallback``)."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return fallback


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """Timesteps go to the network in float64 for float64 networks, else float32.

    Networks keep their time embedding in float32 even under bf16 (the paper's stabiliser for large
    models), so a bf16 timestep would throw that precision away before the embedding sees it.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def applies_guidance(w: float, applies: GuidanceApplies) -> bool:
    """Whether guidance scale ``w`` means a CFG mix under rule ``applies`` (see :data:`GuidanceApplies`)."""
    return w > 1.0 if applies == "above_one" else w != 1.0


@attrs.define
class GuidanceConfig:
    """The CFG settings every teacher wrapper's config has (its own fields follow these)."""

    #: CFG scale w in F_u + w·(F_c − F_u) for teacher targets: 1 is the conditional model alone, 0 the
    #: unconditional one.
    guidance: float = attrs.field(default=1.0, validator=s.guidance_scale)
    #: Which w apply CFG: ``not_one`` (every w ≠ 1) or ``above_one`` (only w > 1, the rCM release's rule).
    guidance_applies: GuidanceApplies = "not_one"


class TrigFlowWrapper:
    """Base of the ``teacher`` components: maps a network's parameterisation into TrigFlow.

    A subclass says what the network is fed (:meth:`network_input`) and how its output becomes
    ``(x0, F)`` (:meth:`trigflow_output`), both in float64. This class does the dtype handling and
    classifier-free guidance: with a guidance scale ``w`` and a null (or negative) condition,
    ``F = F_u + w·(F_c − F_u)`` and ``x0 = cos t·x_t − sin t·F`` (equal to ``x0_u + w·(x0_c − x0_u)``).
    Which w mix (``guidance_applies``): every w ≠ 1 (``not_one``, the default, so w = 0 is the
    unconditional model), or only w > 1 (``above_one``, the rCM release's rule; w <= 1 is then the
    conditional model). w = 1 is the conditional model under both, with one network call.

    The network sees ``x`` in its own dtype (:func:`network_dtype`) and the timestep in float32, or
    float64 for a float64 network (:func:`time_dtype`); its output is read back in float64.
    """

    def __init__(self, *, guidance: float, guidance_applies: GuidanceApplies = "not_one") -> None:
        #: The recipe's guidance scale; losses pass it as ``guidance=`` when they want the CFG target.
        self.guidance = guidance
        self.guidance_applies: GuidanceApplies = guidance_applies

    def guides(self, w: float) -> bool:
        """Whether scale ``w`` mixes in the unconditional output under this wrapper's rule."""
        return applies_guidance(w, self.guidance_applies)

    # -- what subclasses define -------------------------------------------------------------------
    def network_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(network input shaped like ``x_t``, timestep of shape (B,)), float64."""
        raise NotImplementedError

    def trigflow_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """(x0, F) in float64 from the network output ``out`` (float64)."""
        raise NotImplementedError

    # -- the Teacher protocol ---------------------------------------------------------------------
    def evaluate(self, net: nn.Module, x_t: Tensor, t: Tensor, condition: Condition) -> tuple[Tensor, Tensor]:
        """One network call: float64 (x0, F) at TrigFlow time ``t`` (float64, shape (B,))."""
        x64 = x_t.to(torch.float64)
        x_in, timestep = self.network_input(x64, t)
        dtype = network_dtype(net, x_t.dtype)
        out = net(x_in.to(dtype), timestep.to(time_dtype(dtype)), **condition)
        return self.trigflow_output(x64, t, out.to(torch.float64))

    def denoise(
        self,
        net: nn.Module,
        x_t: Tensor,
        t: Tensor,
        condition: Condition,
        *,
        guidance: float | None = None,
        null_condition: Condition | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(x0, F)`` at TrigFlow time ``t``, in ``x_t``'s dtype; CFG when both ``guidance`` and
        ``null_condition`` are given and :meth:`guides` says the scale applies (otherwise the
        conditional output, with no second call)."""
        t = batch_times(t, x_t)
        x0, F = self.evaluate(net, x_t, t, condition)
        if guidance is not None and null_condition is not None and self.guides(guidance):
            _, F_u = self.evaluate(net, x_t, t, null_condition)
            F = F_u + guidance * (F - F_u)
            tt = expand(t, x_t)
            x0 = torch.cos(tt) * x_t.to(torch.float64) - torch.sin(tt) * F
        return x0.to(x_t.dtype), F.to(x_t.dtype)


# -- helpers for losses and rollouts ---------------------------------------------------------------
def need_teacher(ctx: Any, who: str) -> TrigFlowWrapper:
    if ctx.teacher is None:
        raise RuntimeError(
            f"{who} needs a teacher wrapper to read networks in TrigFlow: add e.g. "
            "`teacher_wrapper: {use: rectified_flow, t_scale: 1000}` to the recipe"
        )
    return ctx.teacher


def draw_times(ctx: Any, role: str, n: int, like: Tensor, who: str) -> Tensor:
    """``n`` TrigFlow times from the recipe's time sampler ``role``, float64 on ``like``'s device."""
    sampler = ctx.time.get(role) if ctx.time else None
    if sampler is None:
        known = ", ".join(sorted(ctx.time)) if ctx.time else "none"
        raise RuntimeError(f"{who} draws times from `time.{role}`, which this recipe lacks (time samplers: {known})")
    t = sampler(n, generator=ctx.generator)
    return t.to(device=like.device, dtype=torch.float64)


def guidance_for(ctx: Any, override: float | None, who: str) -> tuple[float | None, Condition | None]:
    """(guidance scale, null condition) for a CFG teacher target; (None, None) for the conditional one.

    ``override`` (a loss's own ``guidance``) wins over the wrapper's; the wrapper's rule
    (:meth:`TrigFlowWrapper.guides`) says whether it applies. A scale that applies without a null
    condition in the batch is an error: silently distilling the unguided teacher is worse.
    """
    w = override if override is not None else getattr(ctx.teacher, "guidance", None)
    null = ctx.batch.null_condition
    if w is None or not teacher_guides(ctx.teacher, w):
        return None, None
    if null is None:
        raise RuntimeError(
            f"{who}: teacher guidance {w} needs an unconditional (null / negative) condition, but the dataset's "
            "batches have none; set guidance: 1.0 or use a dataset that provides null_condition"
        )
    return w, null


def teacher_guides(teacher: Any, w: float) -> bool:
    """Whether ``teacher`` applies CFG at scale ``w`` (its :meth:`~TrigFlowWrapper.guides`; w ≠ 1 for a
    teacher without one)."""
    guides = getattr(teacher, "guides", None)
    return bool(guides(w)) if callable(guides) else w != 1.0


def per_sample_sum(x: Tensor) -> Tensor:
    """Sum over every dimension but the first."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def finite_rows(*xs: Tensor) -> Tensor:
    """Boolean (B,): True where every element of every tensor is finite for that sample."""
    ok = torch.ones(xs[0].shape[0], dtype=torch.bool, device=xs[0].device)
    for x in xs:
        ok &= torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    return ok


def finite_input(x: Tensor) -> tuple[Tensor, Tensor]:
    """(``x`` with its non-finite samples replaced by zeros, boolean (B,) True for the finite samples).

    For a network input whose bad samples the loss masks. Masking the loss term alone is not enough: the
    backward pass multiplies that term's zero gradient by the sample's activations inside the network, and
    0·NaN is NaN, so every parameter's gradient would still turn NaN. Zeros keep the activations finite;
    the caller drops the sample's term (``ok``).
    """
    ok = finite_rows(x)
    return torch.where(expand(ok, x), x, torch.zeros_like(x)), ok


def reduce_batch(per_sample: Tensor, ok: Tensor, reduction: Reduction) -> tuple[Tensor, int]:
    """Masked batch reduction: non-finite samples count as 0 and are counted; mean divides by B.

    When no sample is finite the loss is NaN rather than 0: masking is for the odd bad sample, and a
    batch with nothing left means a network (typically the critic) has itself gone non-finite. A 0
    would let training carry on silently with that network dead; NaN makes the trainer stop.
    """
    zeroed = torch.where(ok, per_sample, torch.zeros_like(per_sample))
    total = zeroed.sum()
    if reduction == "mean":
        total = total / per_sample.shape[0]
    if not bool(ok.any()):
        total = total + float("nan")
    return total, int((~ok).sum())
