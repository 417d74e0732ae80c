"""FP8 (e4m3) linear layers for sampling: the transformer blocks' ``nn.Linear`` swapped for :class:`Fp8Linear`.

Weights are stored in ``float8_e4m3fn`` with one fp32 scale per output channel (amax/448); activations are
quantised per token (per row of the flattened input) when the layer is called, with the scale amax/448 of
that row (1 for an all-zero row). The product then runs as

* on CUDA devices of compute capability 8.9 and newer (Ada, Hopper), when both feature counts are multiples
  of 16: one Triton kernel (``rcm_kernels.fp8_quantize.quantize_rows_fp8``) reads each row once and writes
  its e4m3 bytes and scale, the rows already padded to the multiple of 16 that cuBLASLt needs, and
  ``torch._scaled_mm`` multiplies (FP8 tensor cores, fp32 accumulation, row-wise scales, bf16 output) with
  the bias, in bf16, added to the fp32 sums in its epilogue. The kernel's e4m3 values and scales are
  bit-identical to :func:`quantize_rows` on the same device; the result is cast to the layer's output dtype
  (below).
  Triton is imported on the first such call, not with this module, and torch.compile leaves the kernel
  out of its graphs (a graph break);
* elsewhere, the reference: :func:`quantize_rows` in torch, the same FP8 values dequantised to the compute
  dtype (fp32 for half-precision inputs, as the project's layers compute), an ordinary matmul, then the
  bias. It gives what the FP8 kernel computes (up to accumulation order and the bias's rounding), so the
  quality cost measured on the CPU is the GPU's, without its speed.

Under autocast the layer returns what the ``nn.Linear`` it replaces would (autocast's dtype) but computes as
above: autocast is off inside it, so the FP8 product is the same with and without it.

A feed-forward of Linear → GELU (tanh) → Linear (Wan's) becomes one :class:`Fp8GeluMlp`: on the fused path
the GELU runs inside the quantisation of the hidden activation, so that wide activation is not read and
written again by a GELU kernel of its own.

Only linears inside a network's transformer blocks (every ``nn.ModuleList`` named ``blocks``, as Wan, Cosmos
and the digits networks have) are swapped: embeddings, the time path and the output head keep their
precision. Inference only: the FP8 weights are buffers, not parameters, so nothing of this can be trained.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rcm_registry.errors import UserError
from rcm_registry.protocols import fp8_exempt

FP8 = torch.float8_e4m3fn
#: Largest finite e4m3 value.
FP8_MAX = float(torch.finfo(FP8).max)
#: Compute capability from which ``torch._scaled_mm`` takes FP8 operands.
SCALED_MM_CAPABILITY = (8, 9)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(M, K) → e4m3 (M, K) and fp32 scales (M, 1): each row divided by amax/448 (1 for an all-zero row)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (xf / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


@functools.cache
def _fused_quantize() -> Callable[..., tuple[Tensor, Tensor]]:
    """rcm_kernels.fp8_quantize.quantize_rows_fp8, imported on the first call (loading this module, as
    ``rcm list`` and ``rcm validate`` do, never imports Triton)."""
    from rcm_kernels.fp8_quantize import quantize_rows_fp8

    # torch.compile leaves the hand-written kernel alone (a graph break), as the INT8 attention backend does;
    # wrapped here, not as a decorator, since torch.compiler.disable imports torch._dynamo.
    return torch.compiler.disable(quantize_rows_fp8)  # type: ignore[no-any-return]


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is on for x's device (devices autocast does not know, such as meta, never have it)."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager[object]:
    """A context with autocast off for x's device where it is on: the FP8 layers set their own precision."""
    return torch.autocast(x.device.type, enabled=False) if autocast_on(x) else contextlib.nullcontext()


def linear_output_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` returns for input x: autocast's where it is on (it casts every floating input
    but float64), else x's own.

    Keeping x's dtype under autocast instead would hand the layers after an FP8 linear a mix of dtypes: a
    network with fp32 weights (as bf16 training keeps them) sampled under autocast has bf16 video tokens but
    fp32 text tokens at its cross-attention's projections, and backends that take one dtype (int8_sage)
    refuse the fp32 keys next to the bf16 queries.
    """
    if x.is_floating_point() and x.dtype != torch.float64 and autocast_on(x):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def scaled_mm_possible(x: Tensor) -> bool:
    """Whether ``torch._scaled_mm`` can multiply FP8 operands on x's device."""
    return x.is_cuda and torch.cuda.get_device_capability(x.device) >= SCALED_MM_CAPABILITY


class Fp8Linear(nn.Module):
    """``y = x·Wᵀ + b`` with W in e4m3 (per-output-channel scales) and x quantised to e4m3 per token.

    Made from an ``nn.Linear`` by :meth:`from_linear`. ``weight`` reads back the dequantised weight, for code
    that uses a layer's parameters directly (it then sees the FP8 rounding, at the speed of a plain matmul).
    """

    def __init__(self, weight_fp8: Tensor, weight_scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        #: The dtype the original weight had (what :attr:`weight` reads back in).
        self.dtype = dtype
        self.in_features = weight_fp8.shape[1]
        self.out_features = weight_fp8.shape[0]
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Fp8Linear:
        w8, scale = quantize_rows(layer.weight.detach())
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(w8, scale.view(-1), bias, layer.weight.dtype)

    @property
    def weight(self) -> Tensor:
        return self.dequantized_weight(torch.float32).to(self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear takes {self.in_features} input features, got shape {tuple(x.shape)}")
        out_dtype = linear_output_dtype(x)
        # The layer sets its own precision: under autocast the reference matmul would run in autocast's dtype
        # and round the dequantised FP8 operands, which are exact in fp32 only.
        with autocast_off(x):
            rows = x.reshape(-1, self.in_features)
            if self.fused_path(x):
                y = self._scaled_mm(rows, out_dtype)
            else:
                x8, x_scale = quantize_rows(rows)
                # The FP8 values and their scales are exact in fp32 (half types compute there, as _scaled_mm does).
                compute = torch.promote_types(x.dtype, torch.float32)
                y = ((x8.to(compute) * x_scale.to(compute)) @ self.dequantized_weight(compute).T).to(out_dtype)
                if self.bias is not None:
                    y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        """The FP8 weight times its scales, in ``dtype`` (what the reference path multiplies by)."""
        return self.weight_fp8.to(dtype) * self.weight_scale[:, None].to(dtype)

    def fused_path(self, x: Tensor) -> bool:
        """Whether a call with x runs the fused quantisation kernel and ``torch._scaled_mm``."""
        return scaled_mm_possible(x) and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def _scaled_mm(self, rows: Tensor, out_dtype: torch.dtype) -> Tensor:
        # cuBLASLt wants the row count a multiple of 16 too: the kernel writes the padded operand directly.
        return self.product(*_fused_quantize()(rows, 16), rows.shape[0], out_dtype)

    def product(self, x8: Tensor, x_scale: Tensor, m: int, out_dtype: torch.dtype) -> Tensor:
        """The layer's output for its first ``m`` rows from activations already quantised (rows padded to 16)."""
        # Row-wise scales take a bf16 output, and then a bf16 bias, which the epilogue adds to the fp32 sum.
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        y = torch._scaled_mm(
            x8,
            self.weight_fp8.T,
            scale_a=x_scale,
            scale_b=self.weight_scale.view(1, -1),
            bias=bias,
            out_dtype=torch.bfloat16,
        )
        return y[:m].to(out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, e4m3"


class Fp8GeluMlp(nn.Sequential):
    """``Linear → GELU (tanh form) → Linear`` with both linears in FP8, where the hidden activation's GELU runs
    inside its quantisation (``quantize_rows_fp8(..., gelu=True)``): the wide hidden activation is written
    once, by the first product, and read once, by that kernel, instead of also by a GELU kernel and again by
    the quantisation. Kept an ``nn.Sequential`` of the same three children, so names and indices stay.

    Off the fused path (no FP8 tensor cores, feature counts not multiples of 16) it runs its children in
    turn, as the module it replaced would with FP8 linears.
    """

    def forward(self, x: Tensor) -> Tensor:
        up, down = self[0], self[2]
        if not (up.fused_path(x) and down.fused_path(x)):
            return super().forward(x)
        # The first product as the unfused module runs it (its dtype rules under autocast included); the GELU
        # is then rounded to that hidden activation's dtype, as the unfused GELU would store it.
        hidden = up(x).reshape(-1, up.out_features)
        out_dtype = linear_output_dtype(hidden)
        with autocast_off(x):
            x8, x_scale = _fused_quantize()(hidden, 16, gelu=True)
            y = down.product(x8, x_scale, hidden.shape[0], out_dtype)
        return y.reshape(*x.shape[:-1], down.out_features)


def is_gelu_mlp(module: nn.Module) -> bool:
    """An ``nn.Sequential`` of Linear, GELU in its tanh form, Linear (Wan's feed-forward)."""
    if type(module) is not nn.Sequential or len(module) != 3:
        return False
    up, gelu, down = module
    return (
        isinstance(up, nn.Linear)
        and isinstance(gelu, nn.GELU)
        and gelu.approximate == "tanh"
        and isinstance(down, nn.Linear)
        and down.in_features == up.out_features
    )


def fp8_linear_blocks(net: nn.Module) -> int:
    """Swap every ``nn.Linear`` inside the network's ``blocks`` for an :class:`Fp8Linear`, in place; a
    Linear → GELU (tanh) → Linear ``nn.Sequential`` becomes an :class:`Fp8GeluMlp` of two. What the network
    names in ``fp8_exempt()`` (:class:`rcm_registry.protocols.KeepsPrecision`), with all it holds, stays.

    Returns how many were swapped; a UserError when the network has no ``blocks`` with linear layers.
    """
    exempt = {id(m) for kept in fp8_exempt(net) for m in kept.modules()}
    swapped = 0
    for name, module in list(net.named_modules()):
        if name.rsplit(".", 1)[-1] != "blocks" or not isinstance(module, nn.ModuleList):
            continue
        # GELU MLPs first, whole (their GELU then runs in the hidden activation's quantisation), then every
        # linear left; each pass walks the tree as the one before left it.
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if id(child) not in exempt and is_gelu_mlp(child):
                    up, gelu, down = child
                    fp8 = Fp8GeluMlp(Fp8Linear.from_linear(up), gelu, Fp8Linear.from_linear(down))
                    setattr(parent, child_name, fp8)
                    swapped += 2
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if id(child) not in exempt and isinstance(child, nn.Linear):
                    setattr(parent, child_name, Fp8Linear.from_linear(child))
                    swapped += 1
    if not swapped:
        raise UserError(
            f"--fp8-linear / inference.fp8_linear: network {type(net).__name__} has no transformer blocks "
            "(an nn.ModuleList named `blocks`) with linear layers to run in FP8"
        )
    return swapped
