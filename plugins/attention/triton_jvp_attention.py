"""``triton_jvp``: attention whose JVP runs as one fused FlashAttention-2 pass (rcm_kernels.attention_jvp).

Dual-tensor calls (forward-mode AD, the tangent pass of sCM/rCM) unpack primal and tangent, run the
fused kernel for output and output tangent together, and wrap the result back into a dual tensor;
the primal output keeps its autograd graph (Triton backward), the tangent carries no gradient.
Keys and values without tangent (cross-attention to text) take the kernel's 4-matmul fast path.

Primal-only calls go to ``scaled_dot_product_attention`` by default: on CUDA it is the fastest
kernel there is, and on CPU it beats both the math backend and Triton's interpreter by far, so there
is no reason to route them elsewhere. ``primal: kernel`` sends them through the Triton forward and
backward instead (same numerics as the JVP pass; useful to compare).

The kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``
set before triton is imported; slow, meant for tests). Triton is imported on the first dual call, so
registering this backend never imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

import attrs
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

import rcm_registry as rr

#: The head dims the fused kernels take (checked again by rcm_kernels.attention_jvp on every call).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


class TritonUnavailableError(rr.UserError, RuntimeError):
    """The fused kernel cannot run here: Triton is missing or the tensors' device is unsupported."""


@attrs.define
class TritonJvpAttentionConfig:
    #: Where calls without tangents go: ``sdpa`` (fastest) or ``kernel`` (the Triton forward/backward).
    primal: Literal["sdpa", "kernel"] = attrs.field(default="sdpa", validator=attrs.validators.in_(("sdpa", "kernel")))

    def head_dim_problem(self, head_dim: int) -> str | None:
        """The fused kernels tile the head dim in one block of 16 to 256 (rcm_kernels.attention_jvp)."""
        if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
            return (
                f"head dim {head_dim} is outside the [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] the fused JVP kernel takes; "
                "change the width or the heads, or use the 'math' backend"
            )
        return None


def _kernels() -> ModuleType:
    try:
        return importlib.import_module("rcm_kernels.attention_jvp")
    except ImportError as err:
        raise TritonUnavailableError(
            f"attention backend 'triton_jvp' needs Triton (pip install triton; Linux x86-64 with CUDA): {err}. "
            "Use the 'math' backend for JVPs without it (O(N²) memory)."
        ) from err


def _check_device(kernels: ModuleType, q: Tensor) -> None:
    if q.is_cuda or (q.device.type == "cpu" and kernels.interpreter_active()):
        return
    raise TritonUnavailableError(
        f"attention backend 'triton_jvp' runs its fused JVP kernel on CUDA tensors, got {q.device}"
        + (
            " (on CPU only under Triton's interpreter: TRITON_INTERPRET=1 before importing triton)"
            if q.device.type == "cpu"
            else ""
        )
        + "; use the 'math' backend for JVPs on this device"
    )


class TritonJvpAttention:
    """Fused FlashAttention-2 JVP in Triton under forward-mode AD; SDPA for primal-only calls."""

    def __init__(self, config: TritonJvpAttentionConfig) -> None:
        self.config = config

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        unpacked = [forward_ad.unpack_dual(t) for t in (q, k, v)]
        tangents = [u.tangent for u in unpacked]
        if all(t is None for t in tangents):
            if self.config.primal == "kernel":
                kernels = _kernels()
                _check_device(kernels, q)
                return kernels.attention(q, k, v, scale)
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        kernels = _kernels()
        pq, pk, pv = (u.primal for u in unpacked)
        _check_device(kernels, pq)
        tq, tk, tv = tangents
        o, to = kernels.attention_jvp(pq, pk, pv, tq, tk, tv, scale)
        return forward_ad.make_dual(o, to)

    def __repr__(self) -> str:
        return f"TritonJvpAttention(primal={self.config.primal!r})"


COMPONENT = rr.Component(
    kind="attention",
    name="triton_jvp",
    factory=TritonJvpAttention,
    config=TritonJvpAttentionConfig,
    provides={"jvp"},
)
