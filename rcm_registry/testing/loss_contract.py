"""What every ``loss`` must do (``rcm_registry.protocols.Loss``), on the tiny step context of ``fixtures``."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from rcm_registry.engine.context import StepContext
from rcm_registry.protocols import LossOutput
from rcm_registry.testing import fixtures
from rcm_registry.testing.contract import ComponentContract

REDUCTIONS = ("mean", "sum")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LossContract(ComponentContract):
    """One term of a phase's objective, called with the engine's step context.

    Checked: a :class:`~rcm_registry.protocols.LossOutput` holding a finite scalar tensor and finite
    float metrics; its gradient reaches the parameters of the trained role (:attr:`trained`) and no
    other network's, although every network's parameters require gradients (as they do for every role
    some phase trains); bitwise the same loss for an equally seeded step generator whatever the global
    RNG's state; ``config.reduction``, where the config has one, is ``mean`` or ``sum``; and the loss
    splits over data-parallel ranks the way the engine assumes (``Parallel`` in ``protocols``): the
    mean of the ranks' losses (the sum, under ``reduction: sum``) is the whole batch's loss, the ranks
    drawing their randomness through the step context.

    Override :meth:`context` when the loss needs more than :func:`~rcm_registry.testing.fixtures.tiny_step_context`.
    """

    kind = "loss"
    #: The network role the loss trains (``ctx.trained``).
    trained: ClassVar[str] = "student"
    #: ``ctx.iteration`` of the contexts (e.g. past a loss's warmup).
    iteration: ClassVar[int] = 0

    def context(self, seed: int) -> StepContext:
        """A fresh step context, the same for the same seed."""
        return fixtures.tiny_step_context(seed, trained=self.trained, iteration=self.iteration)

    def test_returns_a_finite_scalar_and_float_metrics(self) -> None:
        out = self.make()(self.context(0))
        assert isinstance(out, LossOutput), f"a loss returns LossOutput, got {type(out).__name__}"
        assert isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0, f"loss must be a scalar tensor: {out.loss}"
        assert out.loss.is_floating_point() and bool(torch.isfinite(out.loss)), f"loss is {out.loss}"
        for key, value in out.metrics.items():
            assert isinstance(key, str), f"metric name {key!r} is not a string"
            assert _is_real(value) and math.isfinite(value), f"metric {key!r} = {value!r} is not a finite float"

    def test_gradient_reaches_the_trained_network_only(self) -> None:
        ctx = self.context(0)
        for net in ctx.nets.values():
            net.requires_grad_(True)
            net.zero_grad(set_to_none=True)
        self.make()(ctx).loss.backward()
        trained = ctx.net(self.trained)
        grads = [p.grad for p in trained.parameters()]
        assert all(g is not None for g in grads), f"some parameters of {self.trained!r} got no gradient"
        assert all(bool(torch.isfinite(g).all()) for g in grads), f"non-finite gradient in {self.trained!r}"
        assert any(bool((g != 0).any()) for g in grads), f"the gradient of {self.trained!r} is zero"
        for role, net in ctx.nets.items():
            if net is trained:
                continue
            leaked = [n for n, p in net.named_parameters() if p.grad is not None and bool((p.grad != 0).any())]
            assert not leaked, f"the loss back-propagates into {role!r}, which it does not train: {leaked[:3]}"

    def test_same_seed_same_loss_whatever_the_global_rng(self) -> None:
        loss = self.make()
        torch.manual_seed(1)
        a = loss(self.context(3))
        torch.manual_seed(2)
        b = loss(self.context(3))
        assert torch.equal(a.loss.detach(), b.loss.detach()), f"equal seeds gave losses {a.loss} and {b.loss}"
        assert dict(a.metrics) == dict(b.metrics), f"equal seeds gave metrics {a.metrics} and {b.metrics}"

    def test_ranks_losses_add_up_to_the_whole_batch(self) -> None:
        if self.config_field("reduction"):
            default = self.built_config().reduction
            assert default in REDUCTIONS, f"config.reduction = {default!r}, not one of {REDUCTIONS}"
        for reduction in REDUCTIONS if self.config_field("reduction") else (None,):
            loss = self.make() if reduction is None else self.make(reduction=reduction)
            whole = loss(self.context(4)).loss.detach()
            parts = torch.stack([loss(fixtures.sharded(self.context(4), i, 2)).loss.detach() for i in range(2)])
            combined = parts.sum() if reduction == "sum" else parts.mean()
            err = (combined - whole).abs().item()
            assert err <= 1e-9 * max(whole.abs().item(), 1e-12), (
                f"reduction {reduction or 'mean'}: two ranks' losses {parts.tolist()} combine to {combined.item()}, "
                f"the whole batch's is {whole.item()}; draw per-sample randomness through ctx (randn_like, rand, "
                "sample_times, ctx.time) and reduce over the batch as documented"
            )
