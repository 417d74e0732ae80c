"""The README stays true: its example plugin is the one the tests install, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str, language: str) -> str:
    tail = README.split(marker, 1)[1]
    return tail.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_example_plugin_files_match_the_readme() -> None:
    plugin = ROOT / "tests/data/example_plugin"
    assert block_after("`pyproject.toml`:", "toml") == (plugin / "pyproject.toml").read_text()
    code = block_after("`rcm_logit_normal/__init__.py`:", "python")
    assert code == (plugin / "rcm_logit_normal/__init__.py").read_text()


def test_setup_commands_match_ci() -> None:
    ci = (ROOT / ".ci/run").read_text()
    test_command = re.findall(r"```bash\n(.*?)\n```", README)[1]
    assert test_command in ci.replace("pip install -q ", "pip install ")


def test_every_cli_command_in_the_readme_table_exists() -> None:
    for command in re.findall(r"^\| `rcm (\w+)", README, flags=re.M):
        assert run_cli(command, "--help").code == 0, command


def test_recipe_paths_mentioned_exist() -> None:
    for path in set(re.findall(r"recipes/[\w./-]+\.yaml", README)):
        assert (ROOT / path).is_file(), path
