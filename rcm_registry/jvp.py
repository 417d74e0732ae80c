"""Jacobian-vector products through arbitrary networks with forward-mode AD.

``jvp(fn, primals, tangents)`` evaluates ``fn`` once on ``torch.autograd.forward_ad`` dual tensors
and returns ``(fn(primals), J_fn(primals)·tangents)``. Every standard PyTorch layer has a
forward-mode rule, so a network built from them gets its JVP with no extra code; an attention backend
that wants a fused kernel unpacks the duals itself (see the ``triton_jvp`` backend). The tangent pass
runs without building an autograd graph: sCM treats the tangent as a constant target.

Unlike ``torch.func.jvp`` this works on modules that are not functionalised (hooks, FSDP-sharded
parameters, in-place buffer updates), which is why the engine uses it; ``torch.func.jvp`` in float64
through the ``math`` attention backend is the correctness reference in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from rcm_registry.errors import UserError

__all__ = ["JVPUnsupportedError", "check_jvp_support", "jvp", "jvp_with_graph"]


class JVPUnsupportedError(UserError, RuntimeError):
    """A network's forward does not work under forward-mode AD (dual tensors)."""


def _map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, v) for v in tree)
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return tree


def jvp(
    fn: Callable[..., Any],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor | None],
) -> tuple[Any, Any]:
    """``(fn(*primals), Σ_i ∂fn/∂primal_i · tangent_i)`` by one forward pass on dual tensors.

    ``fn`` may return a tensor or a (nested) tuple / list / dict of tensors; the tangent output has
    the same structure. A ``None`` tangent means that input is held constant. Tangents are cast to
    their primal's dtype (forward AD requires it). An output that does not depend on any primal gets
    a zero tangent. Nothing is recorded for backward: both outputs are plain (detached) tensors.
    """
    with torch.no_grad():
        return _dual_pass(fn, primals, tangents, keep_graph=False)


def jvp_with_graph(
    fn: Callable[..., Any],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor | None],
) -> tuple[Any, Any]:
    """As :func:`jvp`, but the primal output keeps its autograd graph (for a backward through ``fn``'s
    parameters) while the tangent output is detached: a network's output with grad and its JVP from one
    forward, where :func:`jvp` and a separate forward take two. Activation checkpointing cannot recompute
    dual tensors, so ``fn`` must run without it."""
    return _dual_pass(fn, primals, tangents, keep_graph=True)


def _dual_pass(
    fn: Callable[..., Any], primals: Sequence[Tensor], tangents: Sequence[Tensor | None], *, keep_graph: bool
) -> tuple[Any, Any]:
    if len(primals) != len(tangents):
        raise ValueError(f"jvp: {len(primals)} primals but {len(tangents)} tangents")
    with forward_ad.dual_level():
        duals = []
        for p, t in zip(primals, tangents, strict=True):
            if t is None:
                duals.append(p)
                continue
            if t.shape != p.shape:
                raise ValueError(f"jvp: tangent shape {tuple(t.shape)} does not match primal shape {tuple(p.shape)}")
            duals.append(forward_ad.make_dual(p, t.to(dtype=p.dtype, device=p.device)))
        out = fn(*duals)

        def primal(x: Tensor) -> Tensor:
            value = forward_ad.unpack_dual(x).primal
            return value if keep_graph else value.detach()

        def tangent(x: Tensor) -> Tensor:
            tan = forward_ad.unpack_dual(x).tangent
            return torch.zeros_like(forward_ad.unpack_dual(x).primal.detach()) if tan is None else tan.detach()

        return _map(primal, out), _map(tangent, out)


def check_jvp_support(
    fn: Callable[..., Any] | nn.Module,
    primals: Sequence[Tensor],
    *,
    name: str,
    tangents: Sequence[Tensor | None] | None = None,
) -> None:
    """Raise :class:`JVPUnsupportedError` unless ``fn(*primals)`` works under dual tensors.

    ``name`` is how the user knows the network (its recipe role, e.g. ``networks.student``). Random
    tangents are used when none are given. Besides an exception inside the forward, a non-finite
    tangent for finite inputs counts as a failure (a backend that silently drops or corrupts the
    tangent would otherwise train on garbage).
    """
    if tangents is None:
        tangents = [torch.randn_like(p) if p.is_floating_point() else None for p in primals]
    kind = type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__qualname__", repr(fn))
    fix = (
        "the attention backend is the usual cause: set `attention: {use: math}` (reference, any device, "
        "O(N²) memory) or `attention: {use: triton_jvp}` (fused FlashAttention-2 JVP, CUDA) for this network"
    )
    try:
        out, tan = jvp(fn, primals, tangents)
    except Exception as exc:  # any failure inside an arbitrary network means "no JVP support"
        raise JVPUnsupportedError(
            f"network {name} ({kind}) does not support forward-mode AD (dual tensors) needed for the JVP: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; {fix}"
        ) from exc
    inputs_finite = all(bool(torch.isfinite(p).all()) for p in primals if p.is_floating_point())
    outs: list[Tensor] = []
    _map(outs.append, tan)
    if inputs_finite and not all(bool(torch.isfinite(t).all()) for t in outs):
        raise JVPUnsupportedError(f"network {name} ({kind}) gives a non-finite tangent for finite inputs; {fix}")
    del out
