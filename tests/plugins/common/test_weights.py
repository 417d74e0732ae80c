"""rcm_plugins.common.weights: every supported layout read, sharded atomic writing; strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rcm_plugins.common import weights
from safetensors.torch import save_file
from torch import nn

from rcm_registry import atomic, state_dicts
from rcm_registry.errors import CheckpointError


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(4, 3, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "b.weight": torch.randn(2, 4, generator=g, dtype=torch.float64),
        "steps": torch.tensor([3, 1], dtype=torch.int64),
    }


def _same(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


def test_reads_a_single_safetensors_file_and_its_directory(tmp_path: Path) -> None:
    t = _tensors()
    save_file(t, str(tmp_path / "model.safetensors"))
    assert _same(weights.read_state_dict(tmp_path / "model.safetensors"), t)
    assert _same(weights.read_state_dict(tmp_path), t)
    assert weights.describe(tmp_path) == str(tmp_path / "model.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_reads_torch_pickles_with_weights_only(tmp_path: Path, suffix: str) -> None:
    t = _tensors(1)
    torch.save(t, tmp_path / f"model{suffix}")
    assert _same(weights.read_state_dict(tmp_path / f"model{suffix}"), t)


class Payload:
    """Not a tensor: weights_only unpickling must refuse to build it."""


def test_refuses_pickles_that_are_not_plain_tensors(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(1), "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only"):
        weights.read_state_dict(tmp_path / "evil.pth")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="flat dict of tensors, found model"):
        weights.read_state_dict(tmp_path / "nested.pt")


def test_sharded_write_reads_back_through_the_index(tmp_path: Path) -> None:
    t = {f"layer{i}.weight": torch.randn(16, 16) for i in range(5)}
    with atomic.atomic_directory(tmp_path / "ckpt") as d:
        files = weights.write_safetensors(t, d, basename="model", max_shard_bytes=2 * 16 * 16 * 4)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 16 * 16 * 4
    assert set(index["weight_map"]) == set(t)
    assert _same(weights.read_state_dict(tmp_path / "ckpt"), t)
    assert _same(weights.read_state_dict(tmp_path / "ckpt" / "model.safetensors.index.json"), t)
    assert weights.describe(tmp_path / "ckpt").endswith("(3 shards)")


def test_write_separates_shared_storage_and_casts(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    t = {"whole": base, "view": base[2:4], "tied": base}
    weights.write_safetensors(t, tmp_path, dtype=torch.bfloat16)
    back = weights.read_state_dict(tmp_path)
    assert all(v.dtype == torch.bfloat16 for v in back.values())
    assert torch.equal(back["view"], base[2:4].bfloat16()) and torch.equal(back["tied"], base.bfloat16())


def test_missing_shard_and_ambiguous_directories(tmp_path: Path) -> None:
    t = {f"w{i}": torch.randn(64) for i in range(3)}
    weights.write_safetensors(t, tmp_path, max_shard_bytes=64 * 4)
    (tmp_path / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"1 shard\(s\) listed but not found: diffusion_pytorch_model-00002"):
        weights.read_state_dict(tmp_path)

    loose = tmp_path / "loose"
    loose.mkdir()
    save_file({"a": torch.zeros(1)}, str(loose / "one.safetensors"))
    save_file({"b": torch.zeros(1)}, str(loose / "two.safetensors"))
    with pytest.raises(CheckpointError, match=r"several weight files.*one\.safetensors, two\.safetensors"):
        weights.read_state_dict(loose)
    with pytest.raises(CheckpointError, match="no such file"):
        weights.read_state_dict(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no weights found"):
        weights.read_state_dict(empty)


def test_check_state_dict_lists_every_problem_at_once() -> None:
    expected = {"a": (2, 3), "b": (4,), "c": (1,), "d": (5, 5)}
    found = {
        "a": torch.zeros(2, 3),
        "b": torch.zeros(5),
        "d": torch.zeros(5, 4),
        "x": torch.zeros(1),
        "y.q": torch.zeros(1),
    }
    with pytest.raises(CheckpointError) as info:
        state_dicts.check_state_dict(expected, found, source="ckpt.safetensors")
    text = str(info.value)
    assert text.startswith("ckpt.safetensors: checkpoint does not fit the network")
    assert "missing keys (1):\n    c\n" in text
    assert "unexpected keys (2):\n    x\n    y.q\n" in text
    assert "b: checkpoint (5), network (4)" in text and "d: checkpoint (5, 4), network (5, 5)" in text
    # Ignored unexpected keys are tolerated; the rest still fail.
    with pytest.raises(CheckpointError) as info:
        state_dicts.check_state_dict(expected, found, source="s", ignore_unexpected=[r"^y\."])
    assert "unexpected keys (1)" in str(info.value)
    state_dicts.check_state_dict(expected, {k: torch.zeros(s) for k, s in expected.items()}, source="s")


def test_load_strict_copies_or_assigns_with_the_module_dtype() -> None:
    src = nn.Linear(3, 2).double()
    state = src.state_dict()
    dst = nn.Linear(3, 2)
    state_dicts.load_strict(dst, state, source="s")
    assert dst.weight.dtype == torch.float32 and torch.allclose(dst.weight.double(), src.weight)
    with torch.device("meta"):
        meta = nn.Linear(3, 2)
    state_dicts.load_strict(meta, state, source="s", assign=True)
    assert meta.weight.device.type == "cpu" and meta.weight.dtype == torch.float32
    assert isinstance(meta.weight, nn.Parameter) and meta.weight.requires_grad
    with pytest.raises(CheckpointError, match="missing keys"):
        state_dicts.load_strict(nn.Linear(3, 2), {"weight": state["weight"]}, source="s")


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_directory(target) as d:
        (d / "partial.safetensors").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_directory(target) as d:
        weights.write_config({"k": 1}, d)
    assert json.loads((target / "config.json").read_text()) == {"k": 1}
    with pytest.raises(CheckpointError, match="already exists"), atomic.atomic_directory(target):
        pass
    with atomic.atomic_directory(target, overwrite=True) as d:
        weights.write_config({"k": 2}, d)
    assert json.loads((target / "config.json").read_text()) == {"k": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_config_helpers(tmp_path: Path) -> None:
    assert weights.read_config(tmp_path) is None
    weights.write_config({"_class_name": "WanTransformer3DModel", "n": 1}, tmp_path)
    save_file({"a": torch.zeros(1)}, str(tmp_path / "m.safetensors"))
    assert weights.diffusers_class_name(tmp_path) == "WanTransformer3DModel"
    assert weights.read_config(tmp_path / "m.safetensors") == {"_class_name": "WanTransformer3DModel", "n": 1}
    (tmp_path / "config.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        weights.read_config(tmp_path)
