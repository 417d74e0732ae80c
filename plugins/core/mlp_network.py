"""``mlp``: a small time- and class-conditioned residual MLP for low-dimensional data."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import InputSpec, NetworkInputs


def _even(_: object, __: attrs.Attribute, value: int) -> None:
    if value < 2 or value % 2:
        raise ValueError(f"must be an even number >= 2, got {value!r}")


@attrs.define
class MlpConfig:
    #: Data dimension (input and output size).
    dim: int = attrs.field(default=2, validator=schema.positive)
    width: int = attrs.field(default=256, validator=schema.positive)
    #: Number of residual layers.
    depth: int = attrs.field(default=4, validator=schema.positive)
    #: Class labels 0..num_classes−1 plus the null label num_classes (for CFG); 0: unconditional.
    num_classes: int = attrs.field(default=0, validator=schema.non_negative)
    #: Size of the sinusoidal timestep embedding (half sines, half cosines).
    time_embedding_dim: int = attrs.field(default=64, validator=_even)
    #: Frequencies are log-spaced in [min_frequency, max_frequency] (radians per timestep unit):
    #: the defaults resolve timesteps in [0, π/2] (TrigFlow) as well as [0, 1000] (rectified flow).
    min_frequency: float = attrs.field(default=1e-3, validator=[schema.positive, schema.finite])
    max_frequency: float = attrs.field(default=100.0, validator=[schema.positive, schema.finite])

    def __attrs_post_init__(self) -> None:
        if not self.min_frequency <= self.max_frequency:
            raise ValueError(f"min_frequency ({self.min_frequency}) must be <= max_frequency ({self.max_frequency})")

    def network_inputs(self) -> NetworkInputs:
        """Samples of ``dim`` values; with classes, an optional ``label`` (the null label when absent)."""
        condition = {}
        if self.num_classes > 0:
            condition["label"] = InputSpec(shape=(), names=(), classes=self.num_classes, required=False)
        return NetworkInputs(x=InputSpec(shape=(self.dim,), names=("dim",)), condition=condition, width=self.width)

    def parameter_count(self) -> int:
        """Linear layers of the time MLP, input, residual layers and output, and the label embedding."""
        w = self.width
        count = (self.time_embedding_dim + 1) * w + (w + 1) * w  # time MLP
        count += (self.dim + 1) * w + self.depth * (w + 1) * w + (w + 1) * self.dim
        return count + ((self.num_classes + 1) * w if self.num_classes > 0 else 0)


def sinusoidal_embedding(timestep: Tensor, dim: int, min_frequency: float, max_frequency: float) -> Tensor:
    """[sin(τ·f_j), cos(τ·f_j)] for f_j = exp(linspace(ln f_min, ln f_max, dim/2))_j.

    Computed in float64 for a float64 timestep and in float32 otherwise (bf16 phases would be
    useless at timestep 1000).
    """
    dtype = torch.float64 if timestep.dtype == torch.float64 else torch.float32
    log_f = torch.linspace(math.log(min_frequency), math.log(max_frequency), dim // 2, device=timestep.device)
    phase = timestep.to(dtype)[:, None] * torch.exp(log_f.to(dtype))[None, :]
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


class Mlp(nn.Module):
    """Residual MLP for low-dimensional data, conditioned on the timestep and optionally a class label.

    c = MLP_t(emb(timestep)) [+ E(label)]; h = W_in·x; h ← h + W_k·SiLU(h + c) for each layer k;
    output W_out·SiLU(h).

    ``forward(x, timestep, label=None)``: x (B, dim), timestep (B,) or a scalar, label (B,) long.
    A class-conditioned network given no label uses the null label. Built from plain ops, so it
    works under forward-mode AD (dual x and/or timestep).
    """

    def __init__(self, config: MlpConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embedding_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.label_embedding = nn.Embedding(config.num_classes + 1, w) if config.num_classes > 0 else None
        self.input = nn.Linear(config.dim, w)
        self.layers = nn.ModuleList(nn.Linear(w, w) for _ in range(config.depth))
        self.output = nn.Linear(w, config.dim)

    def forward(self, x: Tensor, timestep: Tensor | float, label: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        if not isinstance(timestep, Tensor):
            timestep = torch.tensor(float(timestep), dtype=torch.float64, device=x.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        c = self.config
        embedding = sinusoidal_embedding(timestep.to(x.device), c.time_embedding_dim, c.min_frequency, c.max_frequency)
        cond = self.time_mlp(embedding.to(self.input.weight.dtype))
        if self.label_embedding is not None:
            if label is None:
                label = torch.full((batch,), c.num_classes, dtype=torch.long, device=x.device)
            cond = cond + self.label_embedding(label.to(x.device))
        elif label is not None:
            raise ValueError("this mlp has num_classes = 0 and takes no label")
        h = self.input(x)
        for layer in self.layers:
            h = h + layer(F.silu(h + cond))
        return self.output(F.silu(h))


COMPONENT = rr.Component(kind="network", name="mlp", factory=Mlp, config=MlpConfig, provides={"jvp"})
