"""What every ``rollout`` must do (``rcm_registry.protocols.Rollout``), on the tiny step context of ``fixtures``."""

from __future__ import annotations

from typing import ClassVar

import torch

from rcm_registry.engine.context import StepContext
from rcm_registry.testing import fixtures
from rcm_registry.testing.contract import ComponentContract


class RolloutContract(ComponentContract):
    """The student generating x̂0 from noise, for DMD and the critic.

    Checked: x̂0 shaped like the batch's x0, of its dtype and finite; with ``grad=True`` it carries a
    graph into the student's parameters (and no other network's), with ``grad=False`` none; bitwise the
    same x̂0 for an equally seeded step generator whatever the global RNG's state, another for another
    seed; and each
    data-parallel rank's x̂0 is its rows of the whole batch's (randomness drawn through the step context).
    """

    kind = "rollout"
    #: The network role that generates (``student_net`` of the built-in rollouts).
    student: ClassVar[str] = "student"

    def context(self, seed: int) -> StepContext:
        """A fresh step context, the same for the same seed."""
        return fixtures.tiny_step_context(seed)

    def test_shaped_like_the_batch(self) -> None:
        ctx = self.context(0)
        with torch.no_grad():
            x_hat = self.make()(ctx, grad=False)
        x0 = ctx.batch.x0
        assert isinstance(x_hat, torch.Tensor) and x_hat.shape == x0.shape, (
            f"x̂0 has shape {tuple(getattr(x_hat, 'shape', ()))}, the batch {tuple(x0.shape)}"
        )
        assert x_hat.dtype == x0.dtype, f"x̂0 is {x_hat.dtype}, the batch {x0.dtype}"
        assert bool(torch.isfinite(x_hat).all()), "x̂0 is not finite"

    def test_gradient_only_when_asked(self) -> None:
        ctx = self.context(1)
        for net in ctx.nets.values():
            net.requires_grad_(True)
        rollout = self.make()
        plain = rollout(ctx, grad=False)
        assert not plain.requires_grad, "grad=False gave an x̂0 with a graph"
        x_hat = rollout(ctx, grad=True)
        assert x_hat.requires_grad, "grad=True gave an x̂0 without a graph"
        x_hat.square().sum().backward()
        student = ctx.net(self.student)
        assert any(p.grad is not None and bool((p.grad != 0).any()) for p in student.parameters()), (
            f"x̂0's gradient does not reach {self.student!r}"
        )
        for role, net in ctx.nets.items():
            if net is not student:
                assert all(p.grad is None or not bool(p.grad.any()) for p in net.parameters()), (
                    f"x̂0 back-propagates into {role!r}"
                )

    def test_seeded_by_the_step_generator_only(self) -> None:
        rollout = self.make()
        torch.manual_seed(1)
        a = rollout(self.context(2), grad=False)
        torch.manual_seed(2)
        b = rollout(self.context(2), grad=False)
        assert torch.equal(a, b), "equally seeded step generators gave different rollouts"
        other = rollout(self.context(5), grad=False)
        assert not torch.equal(a, other), "differently seeded step generators gave the same rollout"

    def test_each_rank_gets_its_rows_of_the_whole_batch(self) -> None:
        rollout = self.make()
        whole = rollout(self.context(3), grad=False)
        parts = torch.cat([rollout(fixtures.sharded(self.context(3), i, 2), grad=False) for i in range(2)])
        err = (parts - whole).abs().max().item()
        assert err <= 1e-9 * max(whole.abs().max().item(), 1.0), (
            f"two ranks' x̂0 differ from the whole batch's rows by {err:.3e}: draw per-sample randomness "
            "through ctx (randn_like, rand, sample_times, ctx.time)"
        )
