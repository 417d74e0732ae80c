"""AttentionContract: correct backends pass every check; each deliberately broken one fails its check."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from contract_outcomes import checks_of, failing_checks
from torch import Tensor
from torch.autograd import forward_ad

import rcm_registry as rr
from rcm_registry.testing import AttentionContract


class Plain:
    """A correct backend in plain torch ops: forward-mode AD works through it."""

    def scores(self, q: Tensor, k: Tensor, scale: float | None) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return torch.softmax(scale * q @ k.transpose(-2, -1), dim=-1)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        return self.scores(q, k, scale) @ v


class Refuses(Plain):
    """A correct backend without a JVP: dual tensors are refused with a user error."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        if any(forward_ad.unpack_dual(t).tangent is not None for t in (q, k, v)):
            raise rr.UserError("no forward-mode AD here: use the 'math' backend")
        return super().__call__(q, k, v, scale=scale)


class IgnoresScale(Plain):
    def scores(self, q: Tensor, k: Tensor, scale: float | None) -> Tensor:
        return super().scores(q, k, None)


class DetachesKeys(Plain):
    def scores(self, q: Tensor, k: Tensor, scale: float | None) -> Tensor:
        return super().scores(q, k.detach(), scale)


class DropsTangents(Plain):
    """Computes on the primals of dual inputs and returns a plain tensor."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        q, k, v = (forward_ad.unpack_dual(t).primal for t in (q, k, v))
        return super().__call__(q, k, v, scale=scale)


def checks(backend: type[Plain], provides: frozenset[str]) -> set[str]:
    def make(self: object, **overrides: Any) -> Plain:
        return backend()

    return failing_checks(AttentionContract, make=make, provides=provides)


JVP = frozenset({"jvp"})
TANGENT = "test_forward_mode_tangent_equals_the_reference_or_is_refused"
BROKEN: list[tuple[type[Plain], frozenset[str], set[str]]] = [
    (IgnoresScale, JVP, {"test_output_equals_the_reference", "test_backward_equals_the_reference", TANGENT}),
    (DetachesKeys, JVP, {"test_backward_equals_the_reference", TANGENT}),
    (DropsTangents, JVP, {TANGENT}),
    (DropsTangents, frozenset(), {TANGENT}),  # no JVP declared, yet no refusal either
    (Refuses, JVP, {TANGENT}),  # declares a JVP it refuses
]


@pytest.mark.parametrize(("backend", "provides"), [(Plain, JVP), (Plain, frozenset()), (Refuses, frozenset())])
def test_correct_backends_pass(backend: type[Plain], provides: frozenset[str]) -> None:
    assert checks(backend, provides) == set()


@pytest.mark.parametrize(
    ("backend", "provides", "fails"), BROKEN, ids=[f"{b.__name__}-{'jvp' if p else 'no_jvp'}" for b, p, _ in BROKEN]
)
def test_a_broken_backend_fails_its_checks(backend: type[Plain], provides: frozenset[str], fails: set[str]) -> None:
    assert checks(backend, provides) == fails


def test_every_check_fails_for_some_broken_backend() -> None:
    assert set().union(*(fails for *_, fails in BROKEN)) == checks_of(AttentionContract)
