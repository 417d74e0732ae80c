"""``digits``: shapes, range, labels, split and determinism."""

from __future__ import annotations

import pytest
import torch

import rcm_registry as rr


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def test_images_shapes_range_and_labels(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "digits")
    assert len(ds) == 1797 and ds.sample_shape == (1, 1, 8, 8)
    assert ds.x.dtype == torch.float32 and ds.x.min() == -1.0 and ds.x.max() == 1.0
    assert sorted(ds.y.unique().tolist()) == list(range(10))
    batch = ds.next_batch(256, torch.Generator().manual_seed(0))
    assert batch.x0.shape == (256, 1, 1, 8, 8)
    label, null = batch.condition["label"], batch.null_condition["label"]
    assert label.dtype == torch.long and label.shape == (256,) and (null == 10).all()
    # Each batch image is a dataset image with its own label.
    match = (batch.x0[:, None] == ds.x[None]).flatten(2).all(dim=2)
    assert match.any(dim=1).all()
    assert all(label[i] in ds.y[match[i]] for i in range(256))


def test_batches_are_seeded_and_conditions_balanced(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "digits")
    a = ds.next_batch(32, torch.Generator().manual_seed(3))
    b = ds.next_batch(32, torch.Generator().manual_seed(3))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.condition["label"], b.condition["label"])
    cond, null = ds.conditions(25, torch.Generator())
    assert cond["label"].tolist() == [i % 10 for i in range(25)] and (null["label"] == 10).all()


def test_split_is_disjoint_and_covers_everything(registry: rr.Registry) -> None:
    train = registry.build("dataset", "digits", split="train")
    test = registry.build("dataset", "digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.2)
    flat = lambda d: {(*r.tolist(), int(y)) for r, y in zip(d.x.flatten(1), d.y, strict=True)}
    assert len(flat(train) | flat(test)) == len(flat(registry.build("dataset", "digits")))


def test_upsampling_and_unlabelled(registry: rr.Registry) -> None:
    ds = registry.build("dataset", "digits", upsample=2, labels=False)
    assert ds.sample_shape == (1, 1, 16, 16)
    base = registry.build("dataset", "digits")
    torch.testing.assert_close(ds.x[:, :, :, ::2, ::2], base.x, rtol=0, atol=0)
    batch = ds.next_batch(4, torch.Generator().manual_seed(0))
    assert batch.condition == {} and batch.null_condition is None
