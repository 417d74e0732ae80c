"""The data plugin's dataset passes the dataset contract, reading ahead in a thread and not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_latent_shards import make_dataset

from rcm_registry.testing import DatasetContract


class LatentShardsContract(DatasetContract):
    """``latent_shards`` over small shards written for each test (uneven sizes, a negative prompt, a condition)."""

    name = "latent_shards"

    @pytest.fixture(autouse=True)
    def _shards(self, tmp_path: Path) -> None:
        self.path = make_dataset(tmp_path / "data", extra=True)

    def make(self, **overrides: Any) -> Any:
        return super().make(path=str(self.path), **overrides)


class TestLatentShardsDataset(LatentShardsContract):
    config: ClassVar[dict[str, Any]] = {"prefetch": 0, "mask_key": "text_mask"}


class TestLatentShardsDatasetPrefetching(LatentShardsContract):
    config: ClassVar[dict[str, Any]] = {"prefetch": 2, "shuffle_window": 2, "null": "zeros"}
