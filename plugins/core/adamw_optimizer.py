"""``adamw``: ``torch.optim.AdamW`` with recipe-validated hyper-parameters."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
from torch import nn

import rcm_registry as rr
from rcm_registry import schema


def _betas(_: object, __: attrs.Attribute, value: tuple[float, float]) -> None:
    for beta in value:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"each beta must be in [0, 1), got {beta!r}")


@attrs.define
class AdamWConfig:
    lr: float = attrs.field(validator=[schema.positive, schema.finite])
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    weight_decay: float = attrs.field(default=0.0, validator=[schema.non_negative, schema.finite])
    eps: float = attrs.field(default=1e-8, validator=[schema.positive, schema.finite])


class AdamW:
    """AdamW (decoupled weight decay); call with parameters to get the optimiser."""

    def __init__(self, config: AdamWConfig) -> None:
        self.config = config

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, eps=c.eps)

    def __repr__(self) -> str:
        return f"AdamW({self.config})"


COMPONENT = rr.Component(kind="optimizer", name="adamw", factory=AdamW, config=AdamWConfig)
