"""The command modules: the parser builds without torch, the README's table is the command list, ``--version``."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import rcm_registry
import rcm_registry.commands
from rcm_registry.cli import COMMANDS, build_parser
from rcm_registry.testing import run_cli

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()
HEAVY = ("torch", "diffusers", "transformers", "triton")


def readme_commands() -> list[str]:
    """The commands of the README's "Command line" table, in its order."""
    section = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `rcm ([\w-]+)", section, flags=re.M)


def registered_commands() -> list[str]:
    """The subcommands of the parser, in the order of ``rcm --help``."""
    (subparsers,) = (a for a in build_parser()._actions if a.dest == "command")
    return list(subparsers.choices)


def module_commands() -> dict[str, str]:
    """Command name of every public module in rcm_registry/commands/ (module name -> NAME)."""
    names = {}
    for info in pkgutil.iter_modules(rcm_registry.commands.__path__):
        if not info.name.startswith("_"):
            names[info.name] = importlib.import_module(f"rcm_registry.commands.{info.name}").NAME
    return names


def test_building_the_parser_imports_no_heavy_package() -> None:
    code = (
        "import sys, rcm_registry.cli as cli; cli.build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"building the parser imported {proc.stdout.strip()}"


def test_every_command_module_is_registered() -> None:
    modules = module_commands()
    assert sorted(modules.values()) == sorted(registered_commands())
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in COMMANDS) == sorted(modules)


def test_readme_command_table_lists_exactly_the_registered_commands() -> None:
    listed, registered = readme_commands(), registered_commands()
    assert sorted(set(listed) - set(registered)) == [], "in the README's command table but not a command"
    assert sorted(set(registered) - set(listed)) == [], "a command missing from the README's command table"
    assert listed == registered, "the README's command table lists the commands in the order of `rcm --help`"


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.code == 0, result.err
    assert result.out == f"rcm-registry {rcm_registry.__version__}\n"


def test_export_help_names_the_default_format() -> None:
    result = run_cli("export", "--help")
    assert result.code == 0, result.err
    assert "checkpoint layout (default diffusers)" in " ".join(result.out.split())
