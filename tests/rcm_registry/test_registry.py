"""The registry and plugin loading: registration, conflicts, failures, lookups, building."""

from __future__ import annotations

import types

import attrs
import pytest

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.registry import PluginInfo


@attrs.define
class ScaleConfig:
    factor: float = attrs.field(default=1.0, validator=schema.positive)
    name: str = "x"


class Scale:
    """Multiplies by a factor."""

    def __init__(self, config: ScaleConfig) -> None:
        self.config = config


def _plugin(*components: rr.Component) -> types.SimpleNamespace:
    @rr.hookimpl
    def rcm_components() -> list[rr.Component]:
        return list(components)

    return types.SimpleNamespace(rcm_components=rcm_components)


def test_component_rejects_unknown_kind_and_non_attrs_config() -> None:
    with pytest.raises(ValueError, match="unknown component kind 'lossy'"):
        rr.Component(kind="lossy", name="a", factory=Scale, config=ScaleConfig)
    with pytest.raises(TypeError, match="attrs class"):
        rr.Component(kind="loss", name="a", factory=Scale, config=dict)
    with pytest.raises(ValueError, match="without spaces"):
        rr.Component(kind="loss", name="a b", factory=Scale, config=ScaleConfig)


def test_summary_defaults_to_factory_docstring() -> None:
    comp = rr.Component(kind="loss", name="scale", factory=Scale, config=ScaleConfig)
    assert comp.summary == "Multiplies by a factor."


def test_extra_plugin_builds_with_validated_config() -> None:
    reg = rr.load_registry([("mine", _plugin(rr.Component("loss", "scale_t", Scale, ScaleConfig)))])
    obj = reg.build("loss", "scale_t", factor=3)
    assert isinstance(obj, Scale)
    assert obj.config.factor == 3.0 and isinstance(obj.config.factor, float)


def test_build_reports_all_config_problems_at_once() -> None:
    reg = rr.load_registry([("mine", _plugin(rr.Component("loss", "scale_t", Scale, ScaleConfig)))])
    with pytest.raises(rr.RecipeError) as info:
        reg.build("loss", "scale_t", factor=-1.0, name=3, nme="y")
    text = str(info.value)
    assert "loss:scale_t.factor: must be > 0, got -1.0" in text
    assert "loss:scale_t.name: expected string, got 3" in text
    assert "loss:scale_t.nme: unknown key; did you mean 'name'?" in text
    assert len(info.value.problems) == 3


def test_unknown_component_suggests_close_names() -> None:
    reg = rr.load_registry([("mine", _plugin(rr.Component("loss", "scale_t", Scale, ScaleConfig)))])
    with pytest.raises(rr.UnknownComponentError, match="did you mean 'scale_t'"):
        reg.get("loss", "scale_tt")
    with pytest.raises(rr.UnknownComponentError, match="did you mean 'loss'"):
        reg.get("los", "scale_t")


def test_duplicate_component_names_both_distributions() -> None:
    reg = rr.Registry()
    comp = rr.Component("loss", "dup", Scale, ScaleConfig)
    reg.add_plugin(PluginInfo("first", "dist-one", "1.0"), [comp])
    with pytest.raises(rr.PluginConflictError) as info:
        reg.add_plugin(PluginInfo("second", "dist-two", "2.0"), [comp])
    assert "dist-one" in str(info.value) and "dist-two" in str(info.value)


def test_same_name_in_different_kinds_is_fine() -> None:
    reg = rr.Registry()
    reg.add_plugin(PluginInfo("p", "d", "1"), [rr.Component("loss", "same", Scale, ScaleConfig)])
    reg.add_plugin(PluginInfo("q", "e", "1"), [rr.Component("metric", "same", Scale, ScaleConfig)])
    assert reg.names("loss") == ["same"] and reg.names("metric") == ["same"]


def test_failing_hook_is_reported_and_others_still_load() -> None:
    @rr.hookimpl
    def rcm_components() -> list[rr.Component]:
        raise RuntimeError("boom")

    broken = types.SimpleNamespace(rcm_components=rcm_components)
    good = _plugin(rr.Component("loss", "scale_t", Scale, ScaleConfig))
    reg = rr.load_registry([("broken", broken), ("good", good)])
    assert [f.name for f in reg.failures] == ["broken"]
    assert "RuntimeError: boom" in reg.failures[0].error
    assert reg.find("loss", "scale_t") is not None


def test_hook_returning_wrong_type_is_a_failure_not_a_crash() -> None:
    @rr.hookimpl
    def rcm_components() -> list[rr.Component]:
        return ["not a component"]  # type: ignore[list-item]

    reg = rr.load_registry([("bad", types.SimpleNamespace(rcm_components=rcm_components))])
    assert reg.failures and "must return a list of rcm_registry.Component" in reg.failures[0].error


def test_builtins_are_loaded_through_entry_points() -> None:
    reg = rr.load_registry()
    dists = {p.distribution for p in reg.plugins}
    assert "rcm-registry" in dists
    assert not [f for f in reg.failures if f.distribution == "rcm-registry"], reg.failures
    assert reg.find("attention", "math") is not None


def test_disable_autoload_keeps_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCM_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = rr.load_registry()
    assert {p.distribution for p in reg.plugins} == {"rcm-registry"}
