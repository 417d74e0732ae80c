"""The data plugin's datasets pass the dataset contract, reading ahead in a thread and not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from test_latent_shards import make_dataset

from rcm_registry.testing import DatasetContract
from rcm_registry.testing.rcm_release_tars import torch_bytes, write_release_dataset


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
    config: ClassVar[dict[str, Any]] = {"prefetch": 2, "shuffle_window": 2, "null_condition": "zeros"}


class TestRcmTarShardsDataset(DatasetContract):
    """``rcm_tar_shards`` over tiny shards in the rCM release's layout, reading ahead, with a negative prompt."""

    name = "rcm_tar_shards"
    config: ClassVar[dict[str, Any]] = {"prefetch": 2, "shuffle_window": 2, "mask_key": "text_mask"}

    @pytest.fixture(autouse=True)
    def _shards(self, tmp_path: Path) -> None:
        self.path = tmp_path / "data"
        write_release_dataset(self.path)
        self.negative = tmp_path / "negative.pt"
        self.negative.write_bytes(torch_bytes(torch.ones(6, 8, dtype=torch.bfloat16)))

    def make(self, **overrides: Any) -> Any:
        return super().make(path=str(self.path), negative=str(self.negative), **overrides)
