"""``rcm validate RECIPE [--set K=V ...]``: check a recipe without allocating a tensor; every problem at once."""

from __future__ import annotations

import argparse

from rcm_registry.commands._shared import add_command, add_set_argument, load_validated_recipe

NAME = "validate"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_validate,
        summary="Check a recipe (and --set overrides) without allocating anything; lists every problem.",
        example="rcm validate recipes/quickstart/teacher.yaml --set run.iterations=100",
    )
    p.add_argument("recipe", help="path to a YAML recipe")
    add_set_argument(p)
    return p


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = load_validated_recipe(args.recipe, args.set)
    roles = ", ".join(f"{role}={net.spec.name}" for role, net in recipe.networks.items())
    phases = ", ".join(
        f"{name}({'+'.join(loss.name for loss in phase.losses)})" for name, phase in recipe.body.phases.items()
    )
    print(f"{args.recipe}: OK — networks: {roles}; phases: {phases}; {recipe.body.run.iterations} iterations")
    return 0
