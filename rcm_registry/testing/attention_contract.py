"""What every ``attention`` backend must do (``rcm_registry.protocols.Attention``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor
from torch.autograd import forward_ad

import rcm_registry as rr
from rcm_registry.testing.contract import ComponentContract
from rcm_registry.testing.fixtures import rel_err

#: (B, H, Nq, Nk, D) of the checks: self-attention, and cross-attention with Nq ≠ Nk both ways.
SHAPES: tuple[tuple[int, int, int, int, int], ...] = ((2, 2, 9, 9, 16), (1, 3, 13, 6, 16), (2, 1, 5, 11, 32))


def reference(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(scale·q·kᵀ)·v in float64, written out (scale defaults to 1/√D)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(scale * q @ k.transpose(-2, -1), dim=-1) @ v


def _bhsd(b: int, h: int, n: int, d: int, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A (B, H, S, D) view of (B, S, H, D) memory, as networks pass it."""
    x = torch.randn(b, n, h, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.to(device=device, dtype=dtype).transpose(1, 2)


def _random_like(t: Tensor, seed: int) -> Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(t)


class AttentionContract(ComponentContract):
    """``attn(q, k, v, scale=None)`` on (B, H, S, D) tensors, possibly strided views of (B, S, H, D) memory.

    Checked against :func:`reference` (float64) on random inputs with Nq = Nk and Nq ≠ Nk, the default
    and an explicit scale: the output (shape, dtype, values) and its backward (the gradients of q, k, v).
    Under forward-mode AD (dual tensors): a backend that declares ``provides={"jvp"}`` returns the
    tangent of float64 ``torch.func.jvp`` through the reference, for tangents on q, k and v and on q
    alone (cross-attention to fixed text keys); one that does not either gives that tangent too or
    refuses with a :class:`~rcm_registry.errors.UserError` naming what to use, but never a missing or
    wrong tangent.

    Inputs are made in :attr:`dtype` on :attr:`device` and compared with relative error :attr:`tolerance`.
    """

    kind = "attention"
    dtype: ClassVar[torch.dtype] = torch.float64
    device: ClassVar[str] = "cpu"
    #: Relative error (‖a − b‖/‖b‖) allowed against the float64 reference.
    tolerance: ClassVar[float] = 1e-10

    def cases(self, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor, float | None]]:
        dev = torch.device(self.device)
        for i, (b, h, nq, nk, d) in enumerate(SHAPES):
            s = seed + 10 * i
            q, k, v = (_bhsd(b, h, n, d, s + j, self.dtype, dev) for j, n in enumerate((nq, nk, nk)))
            yield q, k, v, (None if i % 2 == 0 else 0.3)

    def test_output_equals_the_reference(self) -> None:
        attn = self.make()
        for q, k, v, scale in self.cases(0):
            o = attn(q, k, v, scale=scale)
            assert tuple(o.shape) == (*q.shape[:3], v.shape[-1]), f"output {tuple(o.shape)} for q {tuple(q.shape)}"
            assert o.dtype == q.dtype, f"output is {o.dtype} for {q.dtype} inputs"
            err = rel_err(o, reference(q, k, v, scale))
            assert err <= self.tolerance, f"q {tuple(q.shape)}, k {tuple(k.shape)}, scale {scale}: error {err:.3e}"

    def test_backward_equals_the_reference(self) -> None:
        attn = self.make()
        for q, k, v, scale in self.cases(1):
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            weight = torch.randn(q.shape[:3] + v.shape[-1:], generator=torch.Generator().manual_seed(9))
            got = torch.autograd.grad((attn(q, k, v, scale=scale) * weight.to(q)).sum(), (q, k, v))
            want = torch.autograd.grad(
                (reference(q, k, v, scale) * weight.to(q.device, torch.float64)).sum(), (q, k, v)
            )
            for name, g, w in zip("qkv", got, want, strict=True):
                err = rel_err(g, w)
                assert err <= self.tolerance, f"gradient of {name} (q {tuple(q.shape)}, k {tuple(k.shape)}): {err:.3e}"

    def test_forward_mode_tangent_equals_the_reference_or_is_refused(self) -> None:
        attn = self.make()
        declared = "jvp" in self.capabilities()
        for q, k, v, scale in self.cases(2):
            dirs = [_random_like(t, 50 + i) for i, t in enumerate((q, k, v))]
            for tangents in (dirs, [dirs[0], None, None]):
                with torch.no_grad(), forward_ad.dual_level():
                    duals = [
                        t if d is None else forward_ad.make_dual(t, d) for t, d in zip((q, k, v), tangents, strict=True)
                    ]
                    try:
                        out = forward_ad.unpack_dual(attn(*duals, scale=scale))
                    except rr.UserError as refusal:
                        assert not declared, f"the backend declares jvp but refuses dual tensors: {refusal}"
                        continue
                    o, tangent = out.primal.clone(), None if out.tangent is None else out.tangent.clone()
                fixed = [torch.zeros_like(t) if d is None else d for t, d in zip((q, k, v), tangents, strict=True)]
                want_o, want_t = torch.func.jvp(
                    functools.partial(reference, scale=scale),
                    tuple(t.double() for t in (q, k, v)),
                    tuple(d.double() for d in fixed),
                )
                which = "q, k, v" if tangents[1] is not None else "q only"
                assert tangent is not None, f"dual inputs ({which}) gave an output without tangent"
                assert rel_err(o, want_o) <= self.tolerance, f"primal of the dual call ({which}) is off"
                err = rel_err(tangent, want_t)
                assert err <= self.tolerance, (
                    f"tangent along {which} (q {tuple(q.shape)}, k {tuple(k.shape)}): {err:.3e}"
                )
