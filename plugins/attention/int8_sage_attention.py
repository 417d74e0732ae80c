"""``int8_sage``: 8-bit attention for sampling (SageAttention-style INT8 QKᵀ, rcm_kernels.attention_int8).

K is smoothed (its mean over the sequence subtracted), Q and K are quantised to INT8 with one scale per tile
of rows, QKᵀ runs as an INT8 dot with INT32 accumulation, the softmax in fp32 and P·V in V's dtype. It costs
about 1 % relative error in the attention output on random inputs (tests/kernels/test_attention_int8.py);
what it costs in samples is measured on the moving-digits benchmark (benchmarks/moving_digits_table.py).
``pv: fp8`` multiplies P·V in FP8 too (SageAttention2's: V per channel and P in e4m3), for GPUs with FP8
tensor cores (compute capability 8.9+): about 3.5 % relative error on random inputs.

Where it runs: CUDA tensors go through the Triton kernel; tensors anywhere else go through the torch
reference of the same quantisation (same blocks, exact softmax in fp32, O(N²) memory), so a recipe that
names this backend samples on every machine and a CPU run shows the quality cost the GPU kernel has.

Inference only: no backward and no forward-mode AD. It declares no ``jvp`` (so sCM/rCM recipes refuse it
for the student they train), and calls with dual tensors, or with inputs that require grad while grad is
enabled, are refused with :class:`InferenceOnlyError`. Use it for the output network when sampling
(``inference: {attention: {use: int8_sage}}`` or ``rcm generate --attention int8_sage``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import attrs
import torch
from rcm_plugins.attention.sdpa_attention import has_tangent
from torch import Tensor

import rcm_registry as rr

#: The head dims the kernel takes (rcm_kernels.attention_int8 checks them again on every call).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


class InferenceOnlyError(rr.UserError, RuntimeError):
    """An inference-only attention backend was asked for gradients or tangents."""


@attrs.define
class Int8SageAttentionConfig:
    #: Subtract K's mean over the sequence before quantising (SageAttention's smoothing; off only to compare).
    smooth_k: bool = True
    #: How P·V is multiplied: ``input`` (in V's dtype) or ``fp8`` (e4m3 operands; compute capability 8.9+).
    pv: str = attrs.field(default="input", validator=attrs.validators.in_(("input", "fp8")))

    def inference_only(self) -> str:
        """Validation refuses it on a network a phase trains (the kernel has no backward and no JVP)."""
        return "INT8 attention has no backward: sample with it (`inference: {attention: {use: int8_sage}}`)"

    def head_dim_problem(self, head_dim: int) -> str | None:
        """The kernel pads the head dim to one block of 32 to 256 lanes (rcm_kernels.attention_int8)."""
        if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
            return (
                f"head dim {head_dim} is outside the [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] the INT8 attention kernel "
                "takes; use the 'sdpa' backend"
            )
        return None


def _kernels() -> ModuleType:
    # Imported on the first call: registering the backend never imports Triton.
    return importlib.import_module("rcm_kernels.attention_int8")


class Int8SageAttention:
    """INT8 QKᵀ attention with per-block scales (SageAttention-style), for sampling only."""

    def __init__(self, config: Int8SageAttentionConfig) -> None:
        self.config = config
        # torch.compile leaves the kernel alone (a graph break): Inductor re-generating the hand-written Triton
        # kernel from its source fails on the int8 dot's accumulator type (seen with torch 2.11, Triton 3.6).
        # Wrapped here, not as a decorator, since torch.compiler.disable imports torch._dynamo.
        self._attend = torch.compiler.disable(self._attend_eager)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        return self._attend(q, k, v, scale=scale)  # type: ignore[no-any-return]

    def _attend_eager(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        if has_tangent(q, k, v):
            raise InferenceOnlyError(
                "attention backend 'int8_sage' is for sampling only and does not support forward-mode AD "
                "(dual tensors): use 'triton_jvp' or 'math' for networks that sCM/rCM takes JVPs through"
            )
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise InferenceOnlyError(
                "attention backend 'int8_sage' is for sampling only and has no backward: use 'sdpa' or "
                "'triton_jvp' for networks that are trained, and 'int8_sage' for the output network when "
                "sampling (`inference: {attention: {use: int8_sage}}`)"
            )
        kernels = _kernels()
        try:
            if q.is_cuda:
                return kernels.int8_attention(q, k, v, scale, smooth_k=self.config.smooth_k, pv=self.config.pv)
            cfg = kernels.default_config(q.shape[-1], torch.device("cuda"), self.config.pv)
            return kernels.int8_attention_reference(
                q,
                k,
                v,
                scale,
                block_m=cfg.block_m,
                block_n=cfg.block_n,
                smooth_k=self.config.smooth_k,
                pv=self.config.pv,
                compute=torch.float32,
            )
        except (TypeError, ValueError) as exc:
            raise rr.UserError(f"attention backend 'int8_sage': {exc}") from None

    def __repr__(self) -> str:
        return f"Int8SageAttention(smooth_k={self.config.smooth_k}, pv={self.config.pv})"


COMPONENT = rr.Component(kind="attention", name="int8_sage", factory=Int8SageAttention, config=Int8SageAttentionConfig)
