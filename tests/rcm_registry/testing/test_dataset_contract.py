"""DatasetContract: a correct dataset passes every check; each deliberately broken one fails its check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from contract_outcomes import checks_of, failing_checks

from rcm_registry.protocols import Batch, Condition
from rcm_registry.testing import DatasetContract


class Stream:
    """A correct dataset: batch i is a function of (i, the generator); the position is its state."""

    sample_shape: tuple[int, ...] = (3, 2)

    def __init__(self) -> None:
        self.batches = 0

    def x0(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *self.sample_shape), generator=generator) + self.batches

    def condition(self, n: int) -> tuple[Condition, Condition | None]:
        label = torch.arange(n) % 4
        return {"label": label}, {"label": torch.full_like(label, 4)}

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        x0 = self.x0(batch_size, generator)
        self.batches += 1
        condition, null = self.condition(batch_size)
        return Batch(x0=x0, condition=condition, null_condition=null)

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        return self.condition(n)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batches = int(state["batches"])


class FlatSamples(Stream):
    """Batches of (n, 6) for a sample_shape of (3, 2)."""

    def x0(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return super().x0(n, generator).reshape(n, -1)


class IntegerData(Stream):
    def x0(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return super().x0(n, generator).round().long()


class ShortNullCondition(Stream):
    """One null label for the whole batch."""

    def condition(self, n: int) -> tuple[Condition, Condition | None]:
        condition, _ = super().condition(n)
        return condition, {"label": torch.tensor([4])}


class OtherEvaluationKeys(Stream):
    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        return {"class": torch.arange(n)}, None


class GlobalRng(Stream):
    def x0(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *self.sample_shape)) + self.batches


class ForgetsItsPosition(Stream):
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class PathInItsState(Stream):
    """Keeps a pathlib.Path in its state, which a checkpoint cannot read back with weights_only=True."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "root": Path("/data")}


RESUME = "test_state_dict_resumes_with_the_same_next_batch"
SHAPE = "test_batches_have_the_sample_shape"
EVALUATION = "test_evaluation_conditions_are_shaped_like_the_batches"
BROKEN: list[tuple[type[Stream], set[str]]] = [
    (FlatSamples, {SHAPE}),
    (IntegerData, {SHAPE}),
    (ShortNullCondition, {SHAPE, EVALUATION}),
    (OtherEvaluationKeys, {EVALUATION}),
    (GlobalRng, {"test_equally_seeded_generators_give_the_same_batches", RESUME}),
    (ForgetsItsPosition, {RESUME}),
    (PathInItsState, {RESUME}),
]


def checks(dataset: type[Stream]) -> set[str]:
    def make(self: object, **overrides: Any) -> Stream:
        return dataset()

    return failing_checks(DatasetContract, make=make)


def test_a_correct_dataset_passes() -> None:
    assert checks(Stream) == set()


@pytest.mark.parametrize(("broken", "fails"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_a_broken_dataset_fails_its_checks(broken: type[Stream], fails: set[str]) -> None:
    assert checks(broken) == fails


def test_every_check_fails_for_some_broken_dataset() -> None:
    assert set().union(*(fails for _, fails in BROKEN)) == checks_of(DatasetContract)
