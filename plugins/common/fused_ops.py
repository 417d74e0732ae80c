"""The token-wise ops of DiT blocks, with fused Triton kernels for the forward and the JVP on CUDA.

Three ops carry most of a diffusion transformer's non-matmul time: the modulated layer norm
(``LN(x)·(1 + scale) + shift``), the gated residual add (``x + a·gate``) and the q/k RMS norm followed by
RoPE. In eager PyTorch each is a chain of full-size float32 kernels, and under forward-mode AD (the sCM/rCM
tangent pass) the chain roughly triples, because every op also runs its tangent rule on its own. Here each
op is one ``torch.autograd.Function`` whose forward is one Triton kernel and whose ``jvp`` is one more, so
dual tensors (``rcm_registry.jvp``, ``torch.func.jvp``) and the fused "primal with grad + tangent" pass both
take the fused path. Each backward is a Triton kernel too (it recomputes the row statistics instead of
saving them), so a forward that records a graph (training) takes the kernels as well; calls without
tangents or graph (inference, the teacher) run the forward kernel alone (see ``_route``).

Elsewhere (CPU, float64, no Triton, or with :func:`fused_kernels` switched off) every op is its plain-torch
reference, numerically the same ops the networks always ran, so CPU results and float64 reference runs do
not change. The references are also what the tests hold the kernels to.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from rcm_plugins.common.layers import compute_dtype, rms_norm
from rcm_plugins.common.rope import apply_rope_halves, apply_rope_interleaved
from torch import Tensor
from torch.autograd import forward_ad

__all__ = ["fused_kernels", "gated_residual", "modulated_layer_norm", "rms_norm_rope"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_enabled = True


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Switch the Triton path on or off inside the block (benchmarks compare both in one run)."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def _kernel_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"rcm_kernels.{name}")
    except ImportError:  # no Triton on this platform: the references serve
        return None


def _use_kernels(x: Tensor) -> bool:
    return _enabled and x.is_cuda and x.dtype in _KERNEL_DTYPES and _kernel_module("triton_common") is not None


def _functorch_wrapped(t: Tensor) -> bool:
    # torch.func transforms wrap tensors instead of making them dual; the autograd op handles those.
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def _route(*tensors: Tensor | None) -> str:
    """``kernel``: no tangents and no graph (inference, the teacher): the forward kernel alone. ``function``:
    dual tensors (the JVP pass, the fused pass) or a forward that records a graph (training): the autograd
    op, whose jvp and backward are kernels. ``reference``: off CUDA, in float64, or switched off."""
    x = tensors[0]
    assert x is not None
    if not _use_kernels(x):
        return "reference"
    present = [t for t in tensors if t is not None]
    if any(forward_ad.unpack_dual(t).tangent is not None or _functorch_wrapped(t) for t in present):
        return "function"
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return "function"
    return "kernel"


def _group_view(t: Tensor) -> Tensor:
    """(Bt, G, D) → (Bt, G, 1, D), broadcasting over the tokens of each group; (D,) unchanged."""
    return t if t.dim() == 1 else t.unsqueeze(2)


# --- modulated layer norm ---------------------------------------------------------------------------------


def _layer_norm_affine_reference(x: Tensor, mul: Tensor, add: Tensor, eps: float, groups: int) -> Tensor:
    cd = torch.promote_types(compute_dtype(x.dtype), mul.dtype)
    d = x.shape[-1]
    if mul.dim() == 1:  # an affine LayerNorm: the fused weight/bias form of F.layer_norm
        return F.layer_norm(x.to(cd), (d,), mul.to(cd), add.to(cd), eps).to(x.dtype)
    n = F.layer_norm(x.to(cd), (d,), eps=eps).unflatten(1, (groups, -1))
    return (n * _group_view(mul) + _group_view(add)).flatten(1, 2).to(x.dtype)


class _LayerNormAffine(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, mul: Tensor, add: Tensor, eps: float, groups: int) -> Tensor:  # type: ignore[override]
        return _kernel_module("layer_norm_affine").layer_norm_affine(x, mul, add, eps, groups)  # type: ignore[union-attr]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, mul, add, eps, groups = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, mul, add)
        ctx.save_for_forward(x, mul)
        ctx.eps, ctx.groups = eps, groups

    @staticmethod
    def jvp(ctx: Any, tx: Tensor | None, tmul: Tensor | None, tadd: Tensor | None, *_: Any) -> Tensor:  # type: ignore[override]
        x, mul = ctx.saved_tensors
        with torch.no_grad():
            kernels = _kernel_module("layer_norm_affine")
            return kernels.layer_norm_affine_jvp(x, tx, mul, tmul, tadd, ctx.eps, ctx.groups)  # type: ignore[union-attr]

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        if grad is None:
            return (None,) * 5
        x, mul, add = ctx.saved_tensors
        kernels = _kernel_module("layer_norm_affine")
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = kernels.layer_norm_affine_backward(x, mul, add, grad, ctx.eps, ctx.groups, needs)  # type: ignore[union-attr]
        return (*grads, None, None)


def modulated_layer_norm(x: Tensor, mul: Tensor, add: Tensor, eps: float, groups: int = 1) -> Tensor:
    """``LN(x)·mul + add`` over the last dim in at least float32, rounded once to x's dtype.

    x: tokens (B, S, D). mul, add: (D,) (an affine LayerNorm's weight and bias) or (Bt, G, D) with
    Bt ∈ {1, B}, one vector per sample and group of S/G consecutive tokens (a DiT modulation: mul is
    ``1 + scale``, add the shift).
    """
    route = _route(x, mul, add)
    if route == "function":
        return _LayerNormAffine.apply(x, mul, add, eps, groups)  # type: ignore[no-any-return]
    if route == "kernel":
        return _LayerNormAffine.forward(x, mul, add, eps, groups)
    return _layer_norm_affine_reference(x, mul, add, eps, groups)


# --- gated residual ---------------------------------------------------------------------------------------


def _gated_residual_reference(x: Tensor, a: Tensor, gate: Tensor, groups: int) -> Tensor:
    td = gate.dtype
    gated = (a.to(td).unflatten(1, (groups, -1)) * _group_view(gate)).flatten(1, 2)
    return (x.to(td) + gated).to(x.dtype)


class _GatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, a: Tensor, gate: Tensor, groups: int) -> Tensor:  # type: ignore[override]
        return _kernel_module("gated_residual").gated_residual(x, a, gate, groups)  # type: ignore[union-attr]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, a, gate, groups = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, a, gate)
        ctx.save_for_forward(x, a, gate)
        ctx.groups = groups

    @staticmethod
    def jvp(ctx: Any, tx: Tensor | None, ta: Tensor | None, tgate: Tensor | None, _: Any) -> Tensor:  # type: ignore[override]
        x, a, gate = ctx.saved_tensors
        with torch.no_grad():
            kernels = _kernel_module("gated_residual")
            return kernels.gated_residual_jvp(x, a, gate, tx, ta, tgate, ctx.groups)  # type: ignore[union-attr]

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        if grad is None:
            return (None,) * 4
        _, a, gate = ctx.saved_tensors
        kernels = _kernel_module("gated_residual")
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        return (*kernels.gated_residual_backward(a, gate, grad, ctx.groups, needs), None)  # type: ignore[union-attr]


def gated_residual(x: Tensor, a: Tensor, gate: Tensor, groups: int = 1) -> Tensor:
    """``x + a·gate`` in gate's dtype (at least float32), rounded to x's dtype; gate (Bt, G, D) as above."""
    route = _route(x, a, gate) if a.dtype == x.dtype else "reference"
    if route == "function":
        return _GatedResidual.apply(x, a, gate, groups)  # type: ignore[no-any-return]
    if route == "kernel":
        return _GatedResidual.forward(x, a, gate, groups)
    return _gated_residual_reference(x, a, gate, groups)


# --- q/k RMS norm + RoPE ----------------------------------------------------------------------------------


def _rms_norm_rope_reference(
    x: Tensor, weight: Tensor, cos: Tensor | None, sin: Tensor | None, eps: float, per_head: bool, interleaved: bool
) -> Tensor:
    y = rms_norm(x, weight, eps) if per_head else rms_norm(x.flatten(2), weight, eps).unflatten(-1, x.shape[2:])
    if cos is None or sin is None:
        return y
    return (apply_rope_interleaved if interleaved else apply_rope_halves)(y, cos, sin)


class _RmsNormRope(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, weight: Tensor, cos: Tensor | None, sin: Tensor | None, eps: float, per_head: bool, interleaved: bool
    ) -> Tensor:
        rope = None if cos is None or sin is None else (cos, sin)
        kernels = _kernel_module("rms_norm_rope")
        return kernels.rms_norm_rope(x, weight, rope, eps, per_head=per_head, interleaved=interleaved)  # type: ignore[union-attr]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, cos, sin, eps, per_head, interleaved = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, cos, sin)
        ctx.save_for_forward(x, weight, cos, sin)
        ctx.options = (eps, per_head, interleaved)

    @staticmethod
    def jvp(
        ctx: Any, tx: Tensor | None, tweight: Tensor | None, tcos: Tensor | None, tsin: Tensor | None, *_: Any
    ) -> Tensor:  # type: ignore[override]
        x, weight, cos, sin = ctx.saved_tensors
        eps, per_head, interleaved = ctx.options
        with torch.no_grad():
            if tcos is not None or tsin is not None:
                raise NotImplementedError("rms_norm_rope: tangents on the RoPE tables are not supported")
            rope = None if cos is None or sin is None else (cos, sin)
            kernels = _kernel_module("rms_norm_rope")
            opts = {"per_head": per_head, "interleaved": interleaved}
            out = None if tx is None else kernels.rms_norm_rope_jvp(x, tx, weight, rope, eps, **opts)  # type: ignore[union-attr]
            if tweight is not None:  # the output is linear in the weight: the same op with the weight's tangent
                by_weight = kernels.rms_norm_rope(x, tweight, rope, eps, **opts)  # type: ignore[union-attr]
                out = by_weight if out is None else out + by_weight
            return torch.zeros_like(x) if out is None else out

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        if grad is None:
            return (None,) * 7
        x, weight, cos, sin = ctx.saved_tensors
        eps, per_head, interleaved = ctx.options
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            raise NotImplementedError("rms_norm_rope: gradients for the RoPE tables are not supported")
        rope = None if cos is None or sin is None else (cos, sin)
        kernels = _kernel_module("rms_norm_rope")
        needs = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        opts = {"per_head": per_head, "interleaved": interleaved, "needs": needs}
        return (*kernels.rms_norm_rope_backward(x, weight, rope, grad, eps, **opts), None, None, None, None, None)  # type: ignore[union-attr]


def rms_norm_rope(
    x: Tensor,
    weight: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    eps: float,
    *,
    per_head: bool,
    interleaved: bool,
) -> Tensor:
    """RMS norm of query/key heads x (B, S, H, D), then RoPE; the norm's output rounded to x's dtype.

    ``per_head``: statistics over each head's D channels (Cosmos-Predict2), else over all H·D (Wan2.1);
    weight is (D,) or (H·D,). ``interleaved``: RoPE pairs adjacent channels (Wan) instead of halves
    (Cosmos). ``rope`` is (cos, sin), each holding (S, D/2) values; None skips the rotation.
    """
    cos, sin = rope if rope is not None else (None, None)
    route = _route(x, weight, cos, sin)
    if route == "function":
        return _RmsNormRope.apply(x, weight, cos, sin, eps, per_head, interleaved)  # type: ignore[no-any-return]
    if route == "kernel":
        return _RmsNormRope.forward(x, weight, cos, sin, eps, per_head, interleaved)
    return _rms_norm_rope_reference(x, weight, cos, sin, eps, per_head, interleaved)
