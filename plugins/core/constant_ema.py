"""``constant``: the classic EMA with a fixed decay."""

from __future__ import annotations

import attrs
from rcm_plugins.core._ema import ShadowAverager
from torch import nn

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class ConstantEmaConfig:
    decay: float = attrs.field(default=0.999, validator=schema.in_range(0.0, 1.0, high_open=True))


class ConstantEma:
    """Constant EMA: ema ← decay·ema + (1 − decay)·θ at every update (the shadow starts as θ)."""

    def __init__(self, config: ConstantEmaConfig) -> None:
        self.config = config

    def __call__(self, module: nn.Module) -> ShadowAverager:
        decay = self.config.decay
        return ShadowAverager(module, lambda step: decay)

    def __repr__(self) -> str:
        return f"ConstantEma(decay={self.config.decay})"


COMPONENT = rr.Component(kind="ema", name="constant", factory=ConstantEma, config=ConstantEmaConfig)
