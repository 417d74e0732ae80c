"""Activation checkpointing of a network's blocks: none, whole blocks, or everything but the matmuls.

``block``: a block keeps only its inputs and recomputes everything in the backward pass (least memory,
one extra forward). ``matmul``: selective checkpointing that keeps the outputs of matrix products and
attention and recomputes the cheap elementwise ops around them (norms, modulation, activations, RoPE),
which hold most of a transformer block's activation memory at a fraction of its compute.

Checkpointing only applies when a graph is being recorded: the no-grad passes (teacher, the JVP of
sCM under forward-mode AD) run the block as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Mode = Literal["none", "block", "matmul"]

_aten = torch.ops.aten
_SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _matmul_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _matmul_contexts() -> Any:
    return create_selective_checkpoint_contexts(_matmul_policy)


def blocks_of(net: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer (its ``blocks`` ModuleList), or none."""
    blocks = getattr(net, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def apply_activation_checkpointing(net: nn.Module, mode: Mode) -> int:
    """Checkpoint each block of ``net`` in ``mode``; returns how many blocks were wrapped.

    The block's own ``forward`` is replaced on the instance rather than the block wrapped in another
    module, so parameter names (and so checkpoints and state dicts) do not change.
    """
    if mode == "none":
        return 0
    blocks = blocks_of(net)
    for block in blocks:
        block.forward = _checkpointed(block.forward, mode)  # type: ignore[method-assign]
    return len(blocks)


def _checkpointed(forward: Callable[..., Any], mode: Mode) -> Callable[..., Any]:
    extra: dict[str, Any] = {"context_fn": _matmul_contexts} if mode == "matmul" else {}

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)

    return run
