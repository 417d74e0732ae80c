"""What every ``dataset`` must do (``rcm_registry.protocols.Dataset``)."""

from __future__ import annotations

import io
from typing import Any

import torch

from rcm_registry.protocols import Batch, Condition
from rcm_registry.testing.contract import ComponentContract


def _same_condition(a: Condition | None, b: Condition | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_batch(a: Batch, b: Batch) -> bool:
    """Bitwise equal data, condition and null condition."""
    return (
        a.x0.shape == b.x0.shape
        and torch.equal(a.x0, b.x0)
        and _same_condition(a.condition, b.condition)
        and _same_condition(a.null_condition, b.null_condition)
    )


def _check_condition(what: str, condition: Condition | None, n: int, keys: set[str] | None = None) -> None:
    if condition is None:
        return
    assert isinstance(condition, dict), f"{what} must be a dict of tensors, got {type(condition).__name__}"
    for key, value in condition.items():
        assert isinstance(value, torch.Tensor), f"{what}[{key!r}] is {type(value).__name__}, not a tensor"
        assert value.dim() >= 1 and value.shape[0] == n, f"{what}[{key!r}] has shape {tuple(value.shape)} for n = {n}"
    if keys is not None:
        assert set(condition) == keys, f"{what} has keys {sorted(condition)}, the condition {sorted(keys)}"


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through torch.save and torch.load(weights_only=True), as checkpoints store it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class DatasetContract(ComponentContract):
    """Batches of clean data with their network conditions, resumable from a checkpoint.

    Checked: ``sample_shape`` a tuple of positive sizes; ``next_batch(n, g)`` a :class:`Batch` whose x0
    is finite floating point of shape (n, *sample_shape), whose condition tensors have n rows and whose
    null condition (if any) has the condition's keys; ``conditions(n, g)`` the same structure; two
    datasets built alike give bitwise the same batches for equally seeded generators; and ``state_dict``,
    stored the way checkpoints store it (``torch.save``, read back with ``weights_only=True``), makes a
    fresh dataset continue with bitwise the batch the first one gives next.

    Override :meth:`make` for a dataset that needs files (e.g. written to a ``tmp_path`` by an autouse
    fixture of the subclass).
    """

    kind = "dataset"

    def test_batches_have_the_sample_shape(self) -> None:
        ds = self.make()
        shape = ds.sample_shape
        assert isinstance(shape, tuple) and shape, f"sample_shape must be a non-empty tuple, got {shape!r}"
        assert all(isinstance(s, int) and s > 0 for s in shape), f"sample_shape {shape} must hold positive ints"
        g = torch.Generator().manual_seed(0)
        for n in (1, 5):
            batch = ds.next_batch(n, g)
            assert isinstance(batch, Batch), f"next_batch returns a Batch, got {type(batch).__name__}"
            x0 = batch.x0
            assert tuple(x0.shape) == (n, *shape), f"next_batch({n}).x0 has shape {tuple(x0.shape)}, not {(n, *shape)}"
            assert x0.is_floating_point() and bool(torch.isfinite(x0).all()), f"x0 must be finite floats ({x0.dtype})"
            _check_condition("condition", batch.condition, n)
            _check_condition("null_condition", batch.null_condition, n, set(batch.condition))

    def test_evaluation_conditions_are_shaped_like_the_batches(self) -> None:
        ds = self.make()
        keys = set(ds.next_batch(2, torch.Generator().manual_seed(0)).condition)
        condition, null = ds.conditions(7, torch.Generator().manual_seed(1))
        _check_condition("conditions()[0]", condition, 7, keys)
        _check_condition("conditions()[1]", null, 7, keys)

    def test_equally_seeded_generators_give_the_same_batches(self) -> None:
        first, second = self.make(), self.make()
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for i in range(3):
            assert same_batch(first.next_batch(4, g1), second.next_batch(4, g2)), f"batch {i} differs"

    def test_state_dict_resumes_with_the_same_next_batch(self) -> None:
        ds = self.make()
        g = torch.Generator().manual_seed(4)
        for _ in range(3):
            ds.next_batch(3, g)
        state = _round_trip(ds.state_dict())
        generator_state = g.get_state()
        expected = ds.next_batch(3, g)
        resumed = self.make()
        resumed.load_state_dict(state)
        g.set_state(generator_state)
        assert same_batch(resumed.next_batch(3, g), expected), (
            "a fresh dataset loaded with state_dict() gives another batch than the one it was saved from"
        )
