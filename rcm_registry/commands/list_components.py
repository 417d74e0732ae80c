"""``rcm list [KIND]``: the registered components, with the plugin distribution of third-party ones."""

from __future__ import annotations

import argparse

from rcm_registry.commands._shared import add_command, report_plugin_failures
from rcm_registry.component import KINDS
from rcm_registry.errors import UserError

NAME = "list"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_list,
        summary="List registered components, optionally of one kind.",
        example="rcm list loss",
    )
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}")
    return p


def cmd_list(args: argparse.Namespace) -> int:
    from rcm_registry.plugin_loading import registry
    from rcm_registry.suggestions import suggest

    reg = registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.kind and args.kind not in KINDS:
        raise UserError(f"unknown kind {args.kind!r}{suggest(args.kind, KINDS)}")
    for kind in kinds:
        comps = list(reg.components(kind))
        if not comps and not args.kind:
            continue
        print(f"{kind}:")
        for comp in comps:
            origin = reg.origin(kind, comp.name)
            src = "" if origin.builtin else f"  [{origin.distribution}]"
            print(f"  {comp.name:<24} {comp.summary}{src}")
        if not comps:
            print("  (none)")
    report_plugin_failures(reg)
    return 0
