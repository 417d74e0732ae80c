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
    test = block_after("`tests/test_logit_normal.py`:", "python")
    assert test == (plugin / "tests/test_logit_normal.py").read_text()


def test_setup_commands_match_ci() -> None:
    ci = (ROOT / ".ci/run").read_text()
    test_command = re.findall(r"```bash\n(.*?)\n```", README)[1]
    assert test_command in ci.replace("pip install -q ", "pip install ")


def test_every_cli_command_in_the_readme_table_exists() -> None:
    for command in re.findall(r"^\| `rcm ([\w-]+)", README, flags=re.M):
        assert run_cli(command, "--help").code == 0, command


def test_recipe_paths_mentioned_exist() -> None:
    for path in set(re.findall(r"recipes/[\w./-]+\.yaml", README)):
        assert (ROOT / path).is_file(), path


def readme_components() -> set[tuple[str, str, str]]:
    """(plugin, kind, name) of the README's Components list: one bullet per plugin, ``- `PLUGIN` ...``, then
    ``**kind** `name`, `name`; **kind** ...``; text in parentheses is commentary."""
    section = README.split("\n## Components\n", 1)[1]
    lines = section[section.index("\n- `") + 1 :].split("\n\n", 1)[0].splitlines()
    bullets: list[str] = []
    for line in lines:
        if line.startswith("- "):
            bullets.append(line[2:])
        else:  # a continuation line
            bullets[-1] += " " + line.strip()
    found = set()
    for bullet in bullets:
        match = re.fullmatch(r"`([\w.-]+)`(.*)", bullet)
        assert match, f"a Components bullet must start with its plugin's name in backticks: {bullet[:60]!r}"
        plugin, rest = match.groups()
        rest = re.sub(r"\([^()]*\)", "", rest)
        for kind, names in re.findall(r"\*\*(\w+)\*\*([^*]*)", rest):
            found |= {(plugin, kind, name) for name in re.findall(r"`([^`]+)`", names)}
    return found


def test_components_list_is_the_registry() -> None:
    """Every built-in component is listed under the plugin that registers it, and nothing else is."""
    import rcm_registry as rr

    reg = rr.registry()
    builtin = {
        (info.name, kind, name)
        for info in reg.plugins
        if info.distribution == "rcm-registry"
        for kind, name in info.components
    }
    listed = readme_components()
    assert {p for p, _, _ in builtin} == {p for p, _, _ in listed}  # one bullet per plugin, digits included
    assert sorted(builtin - listed) == [], "registered but not in the README"
    assert sorted(listed - builtin) == [], "in the README but not registered (or under another plugin or kind)"
