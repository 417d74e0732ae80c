"""``rcm plugins``: the loaded plugins (name, distribution, version, number of components) and load failures."""

from __future__ import annotations

import argparse
import os

from rcm_registry.commands._shared import add_command

NAME = "plugins"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        NAME,
        cmd_plugins,
        summary="List loaded plugins with their distribution and version.",
        example="rcm plugins",
    )


def cmd_plugins(args: argparse.Namespace) -> int:
    from rcm_registry.plugin_loading import DISABLE_AUTOLOAD_ENV, registry

    reg = registry()
    print(f"{'plugin':<16} {'distribution':<28} {'version':<10} components")
    for info in sorted(reg.plugins, key=lambda p: (p.distribution, p.name)):
        print(f"{info.name:<16} {info.distribution:<28} {info.version:<10} {len(info.components)}")
    for failure in reg.failures:
        print(f"{failure.name:<16} {failure.distribution:<28} {'-':<10} FAILED: {failure.error}")
    if os.environ.get(DISABLE_AUTOLOAD_ENV):
        print(f"({DISABLE_AUTOLOAD_ENV} is set: third-party plugins are not loaded)")
    return 0
