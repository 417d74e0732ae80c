"""Activation checkpointing of a transformer's blocks, chosen by the network config's
``activation_checkpointing``: ``none``, ``selective``, ``block`` or ``auto`` (``true``/``false`` are
``block``/``none``).

- ``block``: a block keeps only its inputs and recomputes everything in the backward pass (least memory,
  one extra forward of every block).
- ``selective``: keeps the outputs of the matrix products and attention and recomputes the cheap elementwise
  ops around them (norms, modulation, activations, RoPE), which hold most of a block's activation memory at a
  fraction of its compute (``torch.utils.checkpoint`` with a selective policy).
- ``auto``: decided at the network's first training forward, at the shape at hand, by a measured probe: one
  forward + backward of the first block in each mode, the device memory its saved activations take measured;
  ``fixed + blocks × per_block(mode)`` (fixed: this network's gradients and two float32 optimizer moments per
  trainable parameter) is compared against the free device memory less a margin, and the first mode that fits
  of none → selective → block is taken (block when none fits; under a process group the least free memory of
  any rank counts, so all ranks decide alike). On the CPU there is no device memory to budget:
  ``auto`` picks none. The decision is logged (``rcm.run``: ``activation checkpointing``) and kept on
  :attr:`BlockCheckpointing.decision`.

Checkpointing only applies when a graph is being recorded: no-grad passes (the teacher, the sCM JVP under
forward-mode AD) run the blocks as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from rcm_registry.errors import UserError

Mode = Literal["none", "selective", "block"]
#: What a network config takes.
Setting = bool | Literal["none", "selective", "block", "auto"]
#: The modes ``auto`` tries, cheapest recomputation first.
ORDER: tuple[Mode, ...] = ("none", "selective", "block")
#: Fraction of the free device memory ``auto`` leaves unplanned (fragmentation, the loss, other buffers).
MARGIN = 0.15

_aten = torch.ops.aten
SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _matmul_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_contexts() -> Any:
    """``context_fn`` of :func:`torch.utils.checkpoint.checkpoint` that saves matmul and attention outputs."""
    return create_selective_checkpoint_contexts(_matmul_policy)


def run_checkpointed(fn: Callable[..., Any], mode: Mode, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its activations checkpointed in ``mode`` when a graph is being recorded."""
    if mode == "none" or not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    extra: dict[str, Any] = {"context_fn": selective_contexts} if mode == "selective" else {}
    return checkpoint(fn, *args, use_reentrant=False, **extra, **kwargs)


def checkpointed(fn: Callable[..., Any], mode: Mode) -> Callable[..., Any]:
    """``fn`` wrapped by :func:`run_checkpointed` (for replacing a block's ``forward`` in place)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return run_checkpointed(fn, mode, *args, **kwargs)

    return run


def normalise(setting: Setting) -> str:
    """``true``/``false`` → ``block``/``none``; the named modes as they are."""
    if setting is True:
        return "block"
    if setting is False:
        return "none"
    return setting


@attrs.frozen
class Decision:
    mode: Mode
    reason: str
    #: Saved-activation bytes of one block in each probed mode.
    per_block: dict[str, int] = attrs.field(factory=dict)
    blocks: int = 0
    fixed_bytes: int = 0
    budget_bytes: int | None = None


def decide(per_block: dict[str, int], blocks: int, fixed_bytes: int, free_bytes: int | None) -> Decision:
    """The first mode of :data:`ORDER` whose ``fixed + blocks × per_block`` fits ``free × (1 − MARGIN)``."""
    if free_bytes is None:
        return Decision("none", "no device memory to budget (CPU): none", per_block, blocks, fixed_bytes, None)
    limit = budget(free_bytes)
    gib = 1024**3
    for mode in ORDER:
        need = fixed_bytes + blocks * per_block[mode]
        if need <= limit:
            return Decision(mode, f"{mode}: {needs(need, limit)}", per_block, blocks, fixed_bytes, limit)
    need = fixed_bytes + blocks * per_block["block"]
    reason = f"block: even it needs {need / gib:.2f} GiB of {limit / gib:.2f} GiB free; the run may not fit"
    return Decision("block", reason, per_block, blocks, fixed_bytes, limit)


def needs(need: int, limit: int) -> str:
    """What a decision's reason says of its estimate against the budget."""
    gib = 1024**3
    return f"needs {need / gib:.2f} GiB of {limit / gib:.2f} GiB free (after a {MARGIN:.0%} margin)"


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (the least over the ranks of a process group, so that every rank takes the
    same decision and their collectives stay in step); None elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        least = torch.tensor([free], device=device, dtype=torch.int64)
        torch.distributed.all_reduce(least, op=torch.distributed.ReduceOp.MIN)
        free = int(least.item())
    return int(free)


def probe_block(block: nn.Module, args: Sequence[Any], mode: Mode) -> int:
    """Device bytes the activations of one forward of ``block`` in ``mode`` keep for the backward (measured
    between the forward and the backward, which then runs and frees them); the inputs are detached copies
    that require grad, so nothing reaches the caller's graph."""
    probe_args = [a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args]
    return _kept_bytes(block, probe_args, lambda: (run_checkpointed(block, mode, *probe_args), None))


def probe_dual_block(block: nn.Module, args: Sequence[Any]) -> int:
    """As :func:`probe_block` without recomputation, for a forward on dual tensors (sCM's ``tangent_pass:
    fused``; called inside its dual level): forward-mode AD records the tangent's own products with the
    parameters for the backward too, so such a forward keeps more than a plain one (about 2.3× for a Wan
    block, ``benchmarks/tangent_pass_memory.py``)."""
    from torch.autograd import forward_ad

    probe_args: list[Any] = []
    for a in args:
        if not isinstance(a, torch.Tensor):
            probe_args.append(a)
            continue
        unpacked = forward_ad.unpack_dual(a)
        primal = unpacked.primal.detach().requires_grad_(a.is_floating_point())
        tangent = unpacked.tangent
        probe_args.append(primal if tangent is None else forward_ad.make_dual(primal, tangent.detach()))

    def forward() -> tuple[torch.Tensor, torch.Tensor | None]:
        out = forward_ad.unpack_dual(block(*probe_args))
        return out.primal, out.tangent

    return _kept_bytes(block, probe_args, forward)


def _kept_bytes(
    block: nn.Module, args: Sequence[Any], forward: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
) -> int:
    """Device bytes ``forward`` (the block's output and, for a dual forward, its tangent) leaves allocated
    beyond its outputs; then the backward from the output frees them and the block's gradients are dropped."""
    device = next(t.device for t in args if isinstance(t, torch.Tensor))
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    out, tangent = forward()
    torch.cuda.synchronize(device)
    outputs = sum(t.numel() * t.element_size() for t in (out, tangent) if t is not None)
    kept = torch.cuda.memory_allocated(device) - before - outputs
    out.float().square().mean().backward()
    del out, tangent
    for p in block.parameters():
        p.grad = None
    return max(0, int(kept))


def budget(free_bytes: int) -> int:
    """The device memory a decision may plan for: the free bytes less :data:`MARGIN`."""
    return int(free_bytes * (1.0 - MARGIN))


def training_state_bytes(net: nn.Module) -> int:
    """Gradients (parameter dtype) and two float32 optimizer moments (AdamW) of ``net``'s trainable parameters."""
    trainable = [p for p in net.parameters() if p.requires_grad]
    return sum(p.numel() * p.element_size() + 2 * 4 * p.numel() for p in trainable)


class BlockCheckpointing:
    """How a network checkpoints its blocks: the config's setting, ``auto`` resolved once at first use."""

    def __init__(self, setting: Setting) -> None:
        self.setting = normalise(setting)
        if self.setting not in (*ORDER, "auto"):
            raise ValueError(f"activation_checkpointing must be one of none, selective, block, auto; got {setting!r}")
        self.decision: Decision | None = None
        #: Whether ``auto`` has checked that a forward on dual tensors fits as well (once, at the first one).
        self.dual_checked = False
        #: Hooks for tests: how free memory and one block's activations are measured.
        self.free_memory: Callable[[torch.device], int | None] = free_device_memory
        self.probe: Callable[[nn.Module, Sequence[Any], Mode], int] = probe_block
        self.probe_dual: Callable[[nn.Module, Sequence[Any]], int] = probe_dual_block

    def mode(self, net: nn.Module, blocks: Sequence[nn.Module], args: Sequence[Any]) -> Mode:
        """The mode for this forward: none without a graph; ``auto`` decided on the first training forward
        with ``args`` (the first block's inputs) and logged."""
        if not (net.training and torch.is_grad_enabled()):
            return "none"
        from torch.autograd import forward_ad  # here: importing it at start-up pulls in torch._dynamo

        dual = any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)
        dual_args = args
        if dual:  # a forward that keeps its graph on dual tensors (sCM's tangent_pass: fused)
            args = [forward_ad.unpack_dual(a).primal if isinstance(a, torch.Tensor) else a for a in args]
        if self.setting != "auto":
            if dual and self.setting != "none":
                raise UserError(
                    f"activation_checkpointing: {self.setting} cannot recompute a forward on dual tensors (the "
                    "sCM loss's tangent_pass: fused): use activation_checkpointing none or auto, or "
                    "tangent_pass: separate"
                )
            return self.setting  # type: ignore[return-value]
        if self.decision is None:
            self.decision = self._decide(net, blocks, args)
            from rcm_registry.engine.logs import get_logger

            d = self.decision
            get_logger("rcm.run").info(
                "activation checkpointing",
                network=type(net).__name__,
                mode=d.mode,
                reason=d.reason,
                per_block_bytes=d.per_block,
            )
        if dual and self.decision.mode != "none":
            raise UserError(
                f"activation_checkpointing auto chose {self.decision.reason}, but a forward on dual tensors (the "
                "sCM loss's tangent_pass: fused) cannot be recomputed: use tangent_pass: separate on this device"
            )
        if dual and not self.dual_checked:
            self.dual_checked = True
            self._check_dual_fits(net, blocks, dual_args)
        return self.decision.mode

    def _check_dual_fits(self, net: nn.Module, blocks: Sequence[nn.Module], args: Sequence[Any]) -> None:
        """``auto`` chose none from a plain forward's probe; a dual forward keeps more, so it is probed too
        and refused before it runs the device out of memory."""
        device = next(t.device for t in args if isinstance(t, torch.Tensor))
        free = self.free_memory(device)
        if free is None or not blocks:
            return
        per_block = self.probe_dual(blocks[0], args)
        need = training_state_bytes(net) + len(blocks) * per_block
        limit = budget(free)
        if need > limit:
            raise UserError(
                f"the sCM loss's tangent_pass: fused keeps {per_block / 1024**3:.2f} GiB a block for the backward "
                f"on {type(net).__name__} at this shape: it {needs(need, limit)}, and a forward on dual tensors "
                "cannot be recomputed: use tangent_pass: separate"
            )
        from rcm_registry.engine.logs import get_logger

        get_logger("rcm.run").info(
            "activation checkpointing, fused tangent pass",
            network=type(net).__name__,
            mode="none",
            reason=needs(need, limit),
            per_block_bytes=per_block,
        )

    def _decide(self, net: nn.Module, blocks: Sequence[nn.Module], args: Sequence[Any]) -> Decision:
        device = next(t.device for t in args if isinstance(t, torch.Tensor))
        free = self.free_memory(device)
        if free is None or not blocks:
            return decide({}, len(blocks), 0, None)
        per_block = {mode: self.probe(blocks[0], args, mode) for mode in ORDER}
        return decide(per_block, len(blocks), training_state_bytes(net), free)

    def __repr__(self) -> str:
        return f"BlockCheckpointing({self.setting}{'' if self.decision is None else ' → ' + self.decision.mode})"


class CheckpointedBlocks:
    """Mixin of a network whose blocks :class:`BlockCheckpointing` checkpoints: ``activation_checkpointing``
    reads and sets the setting (setting it anew resets ``auto``'s decision)."""

    checkpointing: BlockCheckpointing

    @property
    def activation_checkpointing(self) -> str:
        return self.checkpointing.setting

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: Setting) -> None:
        self.checkpointing = BlockCheckpointing(value)
