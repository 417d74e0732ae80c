"""What every ``sampler`` must do (``rcm_registry.protocols.Sampler``), on the tiny sample context of ``fixtures``."""

from __future__ import annotations

import torch

from rcm_registry.engine.context import SampleContext
from rcm_registry.testing import fixtures
from rcm_registry.testing.contract import ComponentContract


class SamplerContract(ComponentContract):
    """Drawing samples from a trained network, given the noise shape, the condition and a generator.

    Checked: the samples have ``ctx.shape`` and ``ctx.dtype`` and are finite; bitwise the same samples
    for an equally seeded generator whatever the global RNG's state, others for another seed; no
    autograd graph even with gradients enabled and a network whose parameters require them; the
    context's condition tensors unchanged; each step reported through ``ctx.report_step()`` (at least one,
    and no more than network evaluations), which progress bars and ``rcm generate --profile`` rely on.
    """

    kind = "sampler"

    def context(self, seed: int) -> SampleContext:
        """A fresh sample context, the same for the same seed."""
        return fixtures.tiny_sample_context(seed)

    def test_samples_of_the_context_shape_and_dtype(self) -> None:
        ctx = self.context(0)
        x = self.make()(ctx)
        assert isinstance(x, torch.Tensor) and tuple(x.shape) == tuple(ctx.shape), (
            f"samples have shape {tuple(getattr(x, 'shape', ()))}, ctx.shape is {ctx.shape}"
        )
        assert x.dtype == ctx.dtype, f"samples are {x.dtype}, ctx.dtype is {ctx.dtype}"
        assert bool(torch.isfinite(x).all()), "samples are not finite"

    def test_seeded_by_the_context_generator_only(self) -> None:
        sampler = self.make()
        torch.manual_seed(1)
        a = sampler(self.context(2))
        torch.manual_seed(2)
        b = sampler(self.context(2))
        assert torch.equal(a, b), "equally seeded generators gave different samples"
        assert not torch.equal(a, sampler(self.context(3))), "differently seeded generators gave the same samples"

    def test_builds_no_graph(self) -> None:
        ctx = self.context(4)
        ctx.net.requires_grad_(True)
        with torch.enable_grad():
            x = self.make()(ctx)
        assert not x.requires_grad, "samples carry an autograd graph: sample under torch.no_grad"

    def test_leaves_the_condition_alone(self) -> None:
        ctx = self.context(5)
        before = {k: v.clone() for k, v in ctx.condition.items()}
        null_before = {k: v.clone() for k, v in (ctx.null_condition or {}).items()}
        self.make()(ctx)
        for what, now, then in [
            ("condition", ctx.condition, before),
            ("null_condition", ctx.null_condition, null_before),
        ]:
            now = now or {}
            assert now.keys() == then.keys(), f"the sampler changed the keys of ctx.{what}: {sorted(now)}"
            changed = [k for k, v in then.items() if not torch.equal(now[k], v)]
            assert not changed, f"the sampler changed the tensors of ctx.{what} under {changed}"

    def test_reports_its_steps(self) -> None:
        ctx = self.context(6)
        reports: list[int] = []
        calls = _CallCounter(ctx.net)
        ctx.net = calls
        ctx.on_step = lambda: reports.append(calls.calls)
        self.make()(ctx)
        assert reports, "the sampler never called ctx.report_step() (call it after each step)"
        assert len(reports) <= calls.calls, (
            f"{len(reports)} steps reported for {calls.calls} network evaluations: report once per step"
        )


class _CallCounter(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        return self.net(*args, **kwargs)
