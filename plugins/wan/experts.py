"""Wan2.2's two experts (A14B) as one network whose forward sends each sample to the expert of its timestep.

Wan2.2-T2V-A14B and Wan2.2-I2V-A14B denoise with two Wan2.1-14B-shaped transformers: a high-noise expert
for the early, noisy part of sampling and a low-noise expert for the rest. The switch is a boundary in the
network's time: a sample whose timestep t (0–1000) has t ≥ boundary·1000 goes to the high-noise expert,
every other one to the low-noise expert, as diffusers' Wan pipelines decide (``t >= boundary_ratio ·
num_train_timesteps``; boundary 0.875 for T2V, 0.9 for I2V).

:class:`WanExperts` holds both experts (state dict ``high_noise.*`` and ``low_noise.*``) or, for a recipe
that distils one expert alone, just one. Its forward splits a batch of mixed timesteps into the experts'
shares, runs each expert on its share and puts the outputs back in the batch's order. The routing is
piecewise constant in t, so forward-mode AD (the sCM tangent pass: dual tensors in x and timestep) goes
through the expert that owns each sample and the tangent is that expert's. Every caller — the teacher
wrapper, the losses, the DMD rollout, the few-step samplers — calls the network at its own t and so gets
the right expert without knowing there are two; a student initialised from the teacher trains each expert
on the samples whose t falls in its interval.

Under a process group of several ranks a rank's share of the batch may hold samples of one expert only;
then both experts still run on every call, the idle one on no samples, so that all ranks issue the same
collectives (FSDP2's all-gathers) and every parameter gets a gradient (DDP's reducer waits for all of them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from rcm_plugins.wan.model import TIMESTEP_SCALE, Attn, WanArch, WanNetwork
from torch import Tensor, nn

Expert = Literal["high_noise", "low_noise"]
HIGH_NOISE: Expert = "high_noise"
LOW_NOISE: Expert = "low_noise"
EXPERTS: tuple[Expert, Expert] = (HIGH_NOISE, LOW_NOISE)


def _process_group_of_several() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class WanExperts(nn.Module):
    """Wan2.2 A14B: ``net(x, timestep, text, **condition)``, each sample by the expert that owns its timestep.

    Args:
        arch: the architecture of each expert (both have the same).
        attention: the attention backend object every expert calls.
        boundary: the expert switch as a fraction of the network's time (``boundary_ratio``).
        experts: which experts the network holds: both, or one of them.
        activation_checkpointing: recompute each block in the backward pass (training with grad only).
        fused_ops: the fused Triton token ops (see :class:`~rcm_plugins.wan.model.WanNetwork`).

    ``run_every_expert`` (None: only under a process group of several ranks) runs both experts on every
    call, the one without samples on an empty batch (see the module docstring).
    """

    def __init__(
        self,
        arch: WanArch,
        attention: Attn,
        *,
        boundary: float,
        experts: Sequence[Expert] = EXPERTS,
        activation_checkpointing: bool = False,
        fused_ops: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < boundary < 1.0:
            raise ValueError(f"boundary must be in (0, 1), got {boundary}")
        if not experts or len(set(experts)) != len(experts) or not set(experts) <= set(EXPERTS):
            raise ValueError(f"experts must be one or both of {', '.join(EXPERTS)}, got {list(experts)}")
        self.arch = arch
        self.boundary = float(boundary)
        # In the order of EXPERTS, so the state dict always reads high_noise.* before low_noise.*.
        self.experts: tuple[Expert, ...] = tuple(e for e in EXPERTS if e in experts)
        self.run_every_expert: bool | None = None
        for name in self.experts:
            self.add_module(
                name,
                WanNetwork(arch, attention, activation_checkpointing=activation_checkpointing, fused_ops=fused_ops),
            )

    def expert(self, name: Expert) -> WanNetwork:
        """The expert network ``name`` (a Wan2.1-layout transformer)."""
        if name not in self.experts:
            raise KeyError(f"this network holds the {' and '.join(self.experts)} expert(s), not {name}")
        net: WanNetwork = getattr(self, name)
        return net

    @property
    def boundary_timestep(self) -> float:
        """Timesteps at or above this belong to the high-noise expert."""
        return self.boundary * TIMESTEP_SCALE

    def owns(self, name: Expert, timestep: Tensor) -> Tensor:
        """Which samples of ``timestep`` (B,) expert ``name`` owns (a bool tensor)."""
        high = timestep >= self.boundary_timestep
        return high if name == HIGH_NOISE else ~high

    def interval(self, name: Expert) -> str:
        """The timesteps expert ``name`` owns, for messages."""
        b = f"{self.boundary_timestep:g}"
        return f"[{b}, {TIMESTEP_SCALE:g}]" if name == HIGH_NOISE else f"[0, {b})"

    @property
    def blocks(self) -> nn.ModuleList:
        """Every expert's transformer blocks: what the parallel strategies shard and checkpoint block by block.

        A fresh list each time, not a submodule, so that the state dict names each block once (under its
        expert).
        """
        return nn.ModuleList(block for name in self.experts for block in self.expert(name).blocks)

    @property
    def sequence_parallel(self) -> Any:
        return self.expert(self.experts[0]).sequence_parallel

    @sequence_parallel.setter
    def sequence_parallel(self, value: Any) -> None:
        for name in self.experts:
            self.expert(name).sequence_parallel = value

    @property
    def dtype(self) -> torch.dtype:
        return self.expert(self.experts[0]).dtype

    def forward(self, x: Tensor, timestep: Tensor, text: Tensor, **condition: Any) -> Tensor:
        """The velocity of each sample from the expert that owns its timestep; arguments as for
        :class:`~rcm_plugins.wan.model.WanNetwork` (``timestep`` one per sample, (B,))."""
        b = x.shape[0]
        if timestep.shape != (b,):
            raise ValueError(f"timestep must have shape ({b},), got {tuple(timestep.shape)}")
        shares = {name: self.owns(name, timestep) for name in self.experts}
        if len(self.experts) == 1:
            name, mine = next(iter(shares.items()))
            if not bool(mine.all()):
                outside = timestep[~mine].detach().flatten().tolist()[:4]
                raise ValueError(
                    f"this network holds only the {name} expert, which owns timesteps {self.interval(name)}; "
                    f"got {', '.join(f'{t:g}' for t in outside)}: restrict the recipe's time samplers, rollout "
                    "and sampler to its interval (or hold both experts)"
                )
        every = self.run_every_expert if self.run_every_expert is not None else _process_group_of_several()
        if not every:
            for name, mine in shares.items():
                if bool(mine.all()):  # the common case of a batch at one t: no splitting
                    return self.expert(name)(x, timestep, text, **condition)
        outputs, rows = [], []
        for name, mine in shares.items():
            index = mine.nonzero().squeeze(1)
            if index.numel() == 0 and not every:
                continue
            share = {k: _rows(v, index, b) for k, v in condition.items()}
            outputs.append(
                self.expert(name)(_rows(x, index, b), _rows(timestep, index, b), _rows(text, index, b), **share)
            )
            rows.append(index)
        if len(outputs) == 1:  # only one expert ran, on every sample, in order
            return outputs[0]
        return torch.cat(outputs).index_select(0, torch.argsort(torch.cat(rows)))

    def export(
        self,
        out: str | os.PathLike[str],
        *,
        format: Literal["diffusers", "native"] = "diffusers",
        dtype: torch.dtype | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write this network as a Wan2.2 repository (both experts) or as one expert's checkpoint folder.

        See :func:`rcm_plugins.wan.wan22_checkpoint.export`; the directory appears complete or not at all.
        """
        from rcm_plugins.wan.wan22_checkpoint import export  # that module imports this one

        return export(self, out, format=format, dtype=dtype, overwrite=overwrite)

    def extra_repr(self) -> str:
        return f"experts={', '.join(self.experts)}, boundary={self.boundary}"


def _rows(value: Any, index: Tensor, batch: int) -> Any:
    """The rows ``index`` of a per-sample tensor (first dimension ``batch``); anything else as it is."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.index_select(0, index)
    return value
