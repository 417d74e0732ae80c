"""The optional parts of the component protocols: each accessor reads its part when present, and a default
(or nothing) when not; the built-in components that have a part satisfy its protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from torch import nn

import rcm_registry as rr
from rcm_registry import protocols as p


@attrs.define
class _Reduced:
    reduction: str = "mean"


class _Loss:
    def __init__(self, config: Any) -> None:
        self.config = config


def test_loss_reduction_reads_the_config_and_defaults_to_mean() -> None:
    assert p.loss_reduction(_Loss(_Reduced("sum"))) == "sum"
    assert p.loss_reduction(_Loss(_Reduced("mean"))) == "mean"
    assert p.loss_reduction(_Loss(object())) == "mean"  # a config without `reduction`
    assert p.loss_reduction(object()) == "mean"  # a loss without a config
    with pytest.raises(rr.UserError, match="loss _Loss: reduction must be 'mean' or 'sum', got 'avg'"):
        p.loss_reduction(_Loss(_Reduced("avg")))


def test_parallel_layout() -> None:
    class Described:
        def describe(self) -> dict[str, Any]:
            return {"world_size": 2}

    assert p.parallel_layout(Described()) == {"world_size": 2}
    assert p.parallel_layout(None) == {}
    assert p.parallel_layout(object()) == {}


def test_network_export_only_when_the_network_has_one(tmp_path: Path) -> None:
    class Net(nn.Linear):
        def export(self, out: Any, **kwargs: Any) -> Path:
            return Path(out)

    net = Net(2, 2)
    export = p.network_export(net)
    assert export is not None and export(tmp_path / "x") == tmp_path / "x"
    assert p.network_export(nn.Linear(2, 2)) is None
    blocked = Net(2, 2)
    blocked.export = None  # type: ignore[method-assign, assignment]
    assert p.network_export(blocked) is None


def test_close_dataset_calls_close_when_there_is_one() -> None:
    calls: list[str] = []

    class Data:
        def close(self) -> None:
            calls.append("closed")

    p.close_dataset(Data())
    p.close_dataset(object())
    assert calls == ["closed"]


def test_data_check_and_conversion_only_when_the_config_has_them(tmp_path: Path) -> None:
    class Checked:
        def check_data(self) -> p.DataCheck:
            return p.DataCheck(problems=["f.tar [k.latent.pt]: missing"], notes=["skipped 1"])

        def convert_data(self, out: Path, **options: Any) -> p.ConversionSummary:
            return p.ConversionSummary(written=1, kept=0, remaining=0, samples=3, shards=1)

    assert p.data_check(Checked()) == p.DataCheck(["f.tar [k.latent.pt]: missing"], ["skipped 1"])
    assert p.data_check(object()) == p.DataCheck()
    convert = p.data_conversion(Checked())
    assert convert is not None and convert(tmp_path, shard_size=1).samples == 3
    assert p.data_conversion(object()) is None


def test_attention_heads() -> None:
    class Heads:
        def attention_heads(self) -> int:
            return 12

    @attrs.define
    class HeadsField:  # a plain number of the same name is not the optional method
        attention_heads: int = 12

    assert p.attention_heads(Heads()) == 12
    assert p.attention_heads(HeadsField()) is None
    assert p.attention_heads(object()) is None


def test_declared_requirements_condition_shapes_and_recipe_problems() -> None:
    class Config:
        def requirements(self) -> str:
            return "needs"

        def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, list[int | None]]:
            return {"image": [3, None, latent_shape[2]]}

        def check_recipe(self, recipe: Any, where: str) -> list[str] | None:
            return [f"{where}: {recipe}"] if recipe else None

    config = Config()
    assert p.declared_requirements(config) == "needs"
    assert p.declared_requirements(object()) is None
    assert p.condition_shapes(config, [16, 1, 8, 8]) == {"image": (3, None, 8)}
    assert p.condition_shapes(object(), [16, 1, 8, 8]) is None
    assert p.recipe_problems(config, "bad", "phases.student") == ["phases.student: bad"]
    assert p.recipe_problems(config, "", "x") == []  # None from the method is no problems
    assert p.recipe_problems(object(), "bad", "x") == []


def test_builtin_components_satisfy_the_optional_protocols() -> None:
    from rcm_plugins.common.export import ExportableNetwork
    from rcm_plugins.data.latent_shards_dataset import LatentShards
    from rcm_plugins.parallel._base import Strategy

    reg = rr.load_registry()
    for name in ("scm", "dmd", "dcm", "fake_score_dsm"):
        config = reg.get("loss", name).config
        assert "reduction" in attrs.fields_dict(config), name
        assert issubclass(config, p.DeclaresRequirements) and issubclass(config, p.ChecksRecipe), name
    for name in ("stochastic_backward", "fixed_timesteps"):
        assert issubclass(reg.get("rollout", name).config, p.DeclaresRequirements), name
    for name in ("wan2.1-t2v", "wan2.1-i2v"):
        assert issubclass(reg.get("network", name).config, p.CountsAttentionHeads), name
    for name in ("wan2.1-t2v", "wan2.1-i2v", "cosmos-predict2-t2i", "cosmos-predict2-v2w"):
        assert issubclass(reg.get("network", name).config, p.DeclaresConditions), name
    assert issubclass(reg.get("parallel", "fsdp2").config, p.ChecksRecipe)
    assert issubclass(Strategy, p.ReportsLayout)
    assert issubclass(ExportableNetwork, p.Exportable)
    assert issubclass(LatentShards, p.Closable)
    assert issubclass(reg.get("dataset", "rcm_tar_shards").config, p.ChecksData)
    assert issubclass(reg.get("dataset", "rcm_tar_shards").config, p.ConvertsData)
