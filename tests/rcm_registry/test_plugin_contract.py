"""What the registry does with plugins that break the contract: a hook implementation under a name no
hook has (a misspelt hook), and a built-in area that fails to import.

Installed distributions are simulated with a ``.dist-info`` folder read through ``importlib.metadata``
(not on ``sys.path``, so it shadows nothing) whose entry points are added to the real ones.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import attrs
import pytest

import rcm_registry as rr
from rcm_registry import plugin_loading
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
RCM_RECIPE = str(ROOT / "recipes/quickstart/rcm.yaml")


@attrs.define
class NoConfig:
    pass


class Nothing:
    """Does nothing."""

    def __init__(self, config: NoConfig) -> None:
        self.config = config


def _component(name: str) -> rr.Component:
    return rr.Component("loss", name, Nothing, NoConfig)


def _misspelt_plugin(name: str, *, also_correct: bool = False) -> types.SimpleNamespace:
    @rr.hookimpl
    def rcm_component() -> list[rr.Component]:
        return [_component(name)]

    hooks = {"rcm_component": rcm_component}
    if also_correct:

        @rr.hookimpl
        def rcm_components() -> list[rr.Component]:
            return [_component(f"{name}_too")]

        hooks["rcm_components"] = rcm_components
    return types.SimpleNamespace(**hooks)


def _plugin(name: str) -> types.SimpleNamespace:
    @rr.hookimpl
    def rcm_components() -> list[rr.Component]:
        return [_component(name)]

    return types.SimpleNamespace(rcm_components=rcm_components)


# -- misspelt hooks ---------------------------------------------------------------------------------------
def test_misspelt_hook_is_a_failure_with_a_suggestion() -> None:
    reg = rr.load_registry([("typo", _misspelt_plugin("typo_loss")), ("good", _plugin("good_loss"))])
    assert [(f.name, f.distribution) for f in reg.failures] == [("typo", "<in-process>")]
    error = reg.failures[0].error
    assert "unknown hook 'rcm_component'" in error and "did you mean 'rcm_components'?" in error
    assert reg.find("loss", "typo_loss") is None
    assert "typo" not in [p.name for p in reg.plugins]
    assert reg.find("loss", "good_loss") is not None  # the others still load
    assert not reg.failures[0].builtin and not reg.builtin_failures


def test_plugin_with_a_misspelt_hook_contributes_nothing() -> None:
    reg = rr.load_registry([("typo", _misspelt_plugin("half", also_correct=True))])
    assert [f.name for f in reg.failures] == ["typo"]
    assert reg.find("loss", "half") is None and reg.find("loss", "half_too") is None


def test_unmarked_functions_are_not_hooks() -> None:
    def rcm_component() -> list[rr.Component]:  # no @rr.hookimpl: an ordinary function of the module
        return [_component("unmarked")]

    plugin = types.SimpleNamespace(rcm_component=rcm_component, rcm_components=_plugin("marked").rcm_components)
    reg = rr.load_registry([("plain", plugin)])
    assert not reg.failures
    assert reg.find("loss", "marked") is not None and reg.find("loss", "unmarked") is None


def test_several_misspelt_plugins_are_each_reported() -> None:
    reg = rr.load_registry([("one", _misspelt_plugin("a")), ("two", _misspelt_plugin("b"))])
    assert sorted(f.name for f in reg.failures) == ["one", "two"]


# -- simulated installed distributions --------------------------------------------------------------------
AddDistribution = Callable[..., None]


@pytest.fixture
def add_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AddDistribution]:
    """``add(name, entry_points={ep: module}, modules={module: source}, hide=(ep, ...))``: a distribution
    whose entry points join the installed ones (``hide`` drops installed ones of the same name)."""
    real = metadata.entry_points
    extra: list[metadata.EntryPoint] = []
    hidden: set[str] = set()
    modules_dir = tmp_path / "modules"
    modules_dir.mkdir()
    monkeypatch.syspath_prepend(str(modules_dir))
    imported: list[str] = []

    def entry_points(**select: str) -> list[metadata.EntryPoint]:
        found = [ep for ep in real(**select) if ep.name not in hidden]
        return found + [ep for ep in extra if all(getattr(ep, k) == v for k, v in select.items())]

    def add(name: str, *, entry_points: dict[str, str], modules: dict[str, str], hide: tuple[str, ...] = ()) -> None:
        info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = [f"{ep} = {module}" for ep, module in entry_points.items()]
        (info / "entry_points.txt").write_text("[rcm_registry]\n" + "\n".join(lines) + "\n")
        for module, source in modules.items():
            (modules_dir / f"{module}.py").write_text(source)
            imported.append(module)
        extra.extend(metadata.PathDistribution(info).entry_points)
        hidden.update(hide)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    # `rcm` commands load the process-wide registry: start it afresh here, and put the real one back after.
    monkeypatch.setattr(plugin_loading, "_loaded", None)
    yield add
    for module in imported:
        sys.modules.pop(module, None)


TYPO_PLUGIN = """\
import attrs

import rcm_registry as rr


@attrs.define
class Config:
    pass


class Typo:
    def __init__(self, config):
        self.config = config


@rr.hookimpl
def rcm_component():
    return [rr.Component(kind="loss", name="typo_loss", factory=Typo, config=Config)]
"""


def test_misspelt_hook_of_an_installed_plugin_names_its_distribution(add_distribution: AddDistribution) -> None:
    add_distribution("rcm-typo", entry_points={"typo": "rcm_typo_plugin"}, modules={"rcm_typo_plugin": TYPO_PLUGIN})
    reg = rr.load_registry()
    [failure] = reg.failures
    assert (failure.name, failure.distribution, failure.builtin) == ("typo", "rcm-typo", False)
    assert "unknown hook 'rcm_component'" in failure.error and "did you mean 'rcm_components'?" in failure.error
    assert reg.find("loss", "typo_loss") is None
    plugins = run_cli("plugins")
    assert plugins.code == 0
    line = next(x for x in plugins.out.splitlines() if x.startswith("typo"))
    assert "rcm-typo" in line and "FAILED: unknown hook 'rcm_component'" in line
    # A third-party failure is reported, not fatal: recipes still validate.
    # The teacher recipe: rcm.yaml names the teacher's run, which validation looks for.
    assert run_cli("validate", str(ROOT / "recipes/quickstart/teacher.yaml")).code == 0


# -- built-in areas that fail to import ------------------------------------------------------------------
BROKEN_AREA = "import rcm_dependency_that_is_not_installed  # the area's missing dependency\n"


def test_failing_builtin_area_stops_recipe_validation_first(add_distribution: AddDistribution) -> None:
    # The installed `distill` area replaced by one that fails to import: without the check the recipe's
    # first problem would be "unknown loss 'scm'".
    add_distribution(
        "rcm-registry",
        entry_points={"distill": "rcm_broken_distill_area"},
        modules={"rcm_broken_distill_area": BROKEN_AREA},
        hide=("distill",),
    )
    reg = rr.load_registry()
    assert [(f.name, f.distribution) for f in reg.builtin_failures] == [("distill", "rcm-registry")]
    assert reg.find("loss", "scm") is None and reg.find("loss", "flow_matching") is not None  # core still loads
    with pytest.raises(rr.UserError) as info:
        validate_recipe(load_recipe(RCM_RECIPE), reg, source=RCM_RECIPE)
    assert not isinstance(info.value, rr.RecipeError)
    text = str(info.value)
    assert "1 built-in plugin area of rcm-registry failed to load" in text
    lines = [line.strip() for line in text.splitlines()[1:]]
    assert len(lines) == 1
    assert lines[0].startswith("distill: ModuleNotFoundError: No module named 'rcm_dependency_that_is_not_installed'")
    assert lines[0].endswith("rcm_broken_distill_area.py:1)")
    assert "unknown loss" not in text

    validated = run_cli("validate", RCM_RECIPE)
    assert validated.code == 2
    assert "distill: ModuleNotFoundError: No module named 'rcm_dependency_that_is_not_installed'" in validated.err
    listed = run_cli("list", "loss")  # listing still works, and warns
    assert listed.code == 0 and "flow_matching" in listed.out and "scm" not in listed.out
    assert "plugin 'distill' from rcm-registry failed to load: ModuleNotFoundError" in listed.err
    plugins = run_cli("plugins")
    assert plugins.code == 0
    line = next(x for x in plugins.out.splitlines() if x.startswith("distill"))
    assert "rcm-registry" in line and "FAILED: ModuleNotFoundError" in line


def test_builtin_means_this_projects_distribution_however_spelt() -> None:
    assert rr.PluginFailure("core", "rcm_registry", "x").builtin
    assert rr.PluginFailure("core", "RCM-Registry", "x").builtin
    assert not rr.PluginFailure("core", "rcm-registry-extras", "x").builtin
    reg = rr.Registry()
    reg.failures += [rr.PluginFailure("mine", "rcm-other", "E: third"), rr.PluginFailure("wan", "rcm-registry", "E: x")]
    with pytest.raises(rr.UserError, match=r"(?s)1 built-in plugin area of rcm-registry.*\n  wan: E: x$"):
        reg.check_builtins()
    rr.Registry().check_builtins()  # nothing failed: nothing raised
