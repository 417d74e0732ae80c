"""The shadow-copy averager shared by the ``power`` and ``constant`` EMA components."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


class ShadowAverager:
    """Float32 shadow copies of a module's parameters, blended as ``ema ← β·ema + (1 − β)·θ``.

    ``beta(step)`` gives β for the update numbered ``step`` (from 0). Floating-point parameters are
    averaged in float32; buffers (and non-floating parameters) are copied as they are. Keys are the
    module's ``state_dict`` names (non-persistent buffers are left out), so the state loads into the
    module itself.
    """

    def __init__(self, module: nn.Module, beta: Callable[[int], float]) -> None:
        self.beta = beta
        self.shadow: dict[str, Tensor] = {}
        with torch.no_grad():
            for name, value in self._items(module):
                self.shadow[name] = self._stored(value)

    @staticmethod
    def _items(module: nn.Module) -> list[tuple[str, Tensor]]:
        # state_dict names (persistent buffers only), so the shadow loads straight into the module
        return list(module.state_dict(keep_vars=True).items())

    @staticmethod
    def _stored(value: Tensor) -> Tensor:
        value = value.detach()
        return value.float().clone() if value.is_floating_point() else value.clone()

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        beta = float(self.beta(step))
        parameter_names = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        for name, value in self._items(module):
            shadow = self.shadow.get(name)
            if shadow is None or shadow.shape != value.shape:
                raise KeyError(f"EMA: module tensor {name!r} does not match the averaged module")
            if name in parameter_names and value.is_floating_point():
                # lerp: shadow + (1 − β)·(θ − shadow) = β·shadow + (1 − β)·θ
                shadow.lerp_(value.detach().float(), 1.0 - beta)
            else:
                shadow.copy_(value.detach())

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, value in self._items(module):
            value.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, Tensor]:
        return {name: value.clone() for name, value in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the module: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(f"EMA state {name!r}: shape {tuple(value.shape)} != {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)
