"""Activation checkpointing of a network's blocks: none, whole blocks, or everything but the matmuls.

``block``: a block keeps only its inputs and recomputes everything in the backward pass (least memory,
one extra forward). ``matmul``: selective checkpointing that keeps the outputs of matrix products and
attention and recomputes the cheap elementwise ops around them (norms, modulation, activations, RoPE),
which hold most of a transformer block's activation memory at a fraction of its compute.

Checkpointing only applies when a graph is being recorded: the no-grad passes (teacher, the JVP of
sCM under forward-mode AD) run the block as it is.
"""

from __future__ import annotations

from typing import Literal

from rcm_plugins.common.checkpointing import checkpointed
from torch import nn

Mode = Literal["none", "block", "matmul"]


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
        # "matmul" is the networks' "selective" mode (rcm_plugins.common.checkpointing).
        block.forward = checkpointed(block.forward, "selective" if mode == "matmul" else mode)  # type: ignore[method-assign]
    return len(blocks)
