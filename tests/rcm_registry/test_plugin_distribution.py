"""A plugin installed as its own distribution (entry point group ``rcm_registry``) is discovered,
listed with its distribution and version, and usable by name in a recipe.

The example plugin is the one the README's plugin guide shows (tests/data/example_plugin). It is
installed for real with pip into a private target folder that the child processes put on their path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rcm_registry.testing import run_cli_subprocess

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests/data/example_plugin"


def pip_install(source: Path, target: Path) -> None:
    """``pip install --target`` from a copy, so that the build leaves nothing in the source tree."""
    copy = target.parent / f"{source.name}-src"
    shutil.copytree(source, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
         "--target", str(target), str(copy)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("plugin") / "site"
    pip_install(PLUGIN, target)
    assert list(target.glob("rcm_logit_normal-*.dist-info")), "pip did not install the distribution"
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def test_listed_by_rcm_list_and_plugins(plugin_path: dict[str, str]) -> None:
    listed = run_cli_subprocess("list", "time_sampler", env=plugin_path)
    assert listed.code == 0, listed.err
    assert "logit_normal" in listed.out and "[rcm-logit-normal]" in listed.out
    plugins = run_cli_subprocess("plugins", env=plugin_path)
    assert plugins.code == 0, plugins.err
    line = next(x for x in plugins.out.splitlines() if x.startswith("logit_normal"))
    assert "rcm-logit-normal" in line and "0.2.0" in line


def test_usable_by_name_in_a_recipe(plugin_path: dict[str, str], tmp_path: Path) -> None:
    recipe = str(ROOT / "recipes/quickstart/teacher.yaml")
    use = [
        "--set", "phases.teacher.losses[0].time={use: logit_normal, mean: 0.0, std: 1.0}",
        "--set", "run.iterations=20", "--set", "networks.teacher.width=16",
    ]  # fmt: skip
    ok = run_cli_subprocess("validate", recipe, *use, env=plugin_path)
    assert ok.code == 0, ok.err
    run = run_cli_subprocess("run", recipe, *use, "--out", str(tmp_path / "run"), "--no-progress", env=plugin_path)
    assert run.code == 0, run.err
    bad = run_cli_subprocess("validate", recipe, *use, "--set", "phases.teacher.losses[0].time.std=-1", env=plugin_path)
    assert bad.code == 2 and "phases.teacher.losses[0].time.std: must be > 0" in bad.err


def test_the_plugins_own_contract_test_passes_against_the_installed_plugin(
    plugin_path: dict[str, str], tmp_path: Path
) -> None:
    """tests/test_logit_normal.py (TimeSamplerContract), run the way the plugin's author runs it, on the
    installed distribution: copied out of the source tree, so only the entry point can find the plugin."""
    test_file = tmp_path / "test_logit_normal.py"
    shutil.copy(PLUGIN / "tests/test_logit_normal.py", test_file)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(test_file)],
        cwd=tmp_path, env={**os.environ, **plugin_path}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASSED") and "TestLogitNormal::" in line]
    assert len(passed) == 5, proc.stdout


def test_without_the_plugin_the_name_is_unknown(tmp_path: Path) -> None:
    recipe = str(ROOT / "recipes/quickstart/teacher.yaml")
    result = run_cli_subprocess("validate", recipe, "--set", "phases.teacher.losses[0].time={use: logit_normal}")
    assert result.code == 2 and "unknown time_sampler 'logit_normal'" in result.err


def test_autoload_can_be_disabled(plugin_path: dict[str, str]) -> None:
    env = {**plugin_path, "RCM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    listed = run_cli_subprocess("list", "time_sampler", env=env)
    assert listed.code == 0 and "logit_normal" not in listed.out


def write_distribution(root: Path, name: str, package: str, init: str) -> Path:
    """A one-package distribution ``name`` whose package is its plugin (entry point: the package name less ``rcm_``)."""
    (root / package).mkdir(parents=True)
    (root / f"{package}/__init__.py").write_text(init)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\n'
        f'[project.entry-points.rcm_registry]\n{package.removeprefix("rcm_")} = "{package}"\n'
        f"[tool.setuptools]\npackages = ['{package}']\n"
    )
    return root


def test_broken_plugin_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    dist = write_distribution(
        tmp_path / "broken", "rcm-broken", "rcm_broken", "raise ImportError('missing dependency xyz')\n"
    )
    target = tmp_path / "site"
    pip_install(dist, target)
    result = run_cli_subprocess("plugins", env={"PYTHONPATH": str(target)})
    assert result.code == 0
    assert "broken" in result.out and "rcm-broken" in result.out and "missing dependency xyz" in result.out
    assert "core" in result.out  # the built-ins still loaded


def test_misspelt_hook_is_reported_with_its_distribution(tmp_path: Path) -> None:
    init = (PLUGIN / "rcm_logit_normal/__init__.py").read_text().replace("def rcm_components(", "def rcm_component(")
    dist = write_distribution(tmp_path / "typo", "rcm-typo", "rcm_typo", init)
    target = tmp_path / "site"
    pip_install(dist, target)
    plugins = run_cli_subprocess("plugins", env={"PYTHONPATH": str(target)})
    assert plugins.code == 0
    line = next(x for x in plugins.out.splitlines() if x.startswith("typo"))
    assert "rcm-typo" in line and "FAILED: unknown hook 'rcm_component'" in line
    assert "did you mean 'rcm_components'?" in line
    listed = run_cli_subprocess("list", "time_sampler", env={"PYTHONPATH": str(target)})
    assert listed.code == 0 and "logit_normal" not in listed.out
