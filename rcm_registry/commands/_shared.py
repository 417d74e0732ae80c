"""What the command modules share: the subparser set-up, the ``--set KEY=VALUE`` option, the integer-list
parser, the recipe loading of ``rcm validate`` / ``rcm run`` and the warning for plugins that failed to load.

Nothing here imports torch: the parser of every command is built on each start of ``rcm``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rcm_registry.errors import UserError

if TYPE_CHECKING:
    from rcm_registry.recipe.sections import Recipe
    from rcm_registry.registry import Registry

CommandFunction = Callable[[argparse.Namespace], int]

SET_HELP = "override a recipe value, e.g. --set phases.student.optimizer.lr=1e-5 (repeatable)"


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: CommandFunction,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    """The subparser of command ``name``: ``summary`` is its line in ``rcm --help`` and its description,
    ``example`` (a command line; further lines indented by the caller) its epilog; ``func`` runs it."""
    p = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def add_set_argument(p: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """The repeatable ``--set KEY=VALUE`` recipe override (``args.set``: a list, empty by default)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    """``--weights CHECKPOINT``: the network's weights from another checkpoint than the run's."""
    p.add_argument(
        "--weights",
        metavar="CHECKPOINT",
        default=None,
        help="the network's weights from this checkpoint instead of the run's, as networks.ROLE.weights.path "
        "would read it: e.g. an rCM release .pt or DCP directory (its student EMA; --no-ema: net.); the target "
        "may then be a recipe file",
    )


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """``--attention NAME``, ``--fp8-linear`` and ``--cuda-graphs``: the recipe's ``inference:`` options for
    the sampled network."""
    p.add_argument(
        "--attention",
        default=None,
        metavar="NAME",
        help="sample with this attention backend, e.g. int8_sage (default: the recipe's inference.attention, "
        "else the network's own)",
    )
    p.add_argument(
        "--fp8-linear",
        action="store_true",
        default=None,
        help="run the transformer blocks' linear layers in FP8 e4m3 (default: the recipe's inference.fp8_linear)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="replay the network's calls from CUDA graphs, each call shape captured once (CUDA only; default: "
        "the recipe's inference.cuda_graphs)",
    )


def int_list(text: str | None, what: str) -> list[int] | None:
    """``16,21,60,104`` (or ``16x21x60x104``) as a list of integers; None stays None. ``what`` names the option."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated integers, e.g. 16,21,60,104") from None


#: Last keys of a recipe path whose value is a file or folder (``weights.path``, ``data.path``, ...).
PATH_KEYS = ("path", "tokenizer", "weights")


def absolute_path_overrides(overrides: Sequence[str]) -> list[str]:
    """``--set`` overrides with every relative file path made absolute (from the working directory), so
    the recipe a run saves names the same files from wherever ``rcm generate`` or ``rcm sample`` start."""
    from rcm_registry.recipe.load import parse_yaml

    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        text = value.strip()
        is_path = key.strip().rsplit(".", 1)[-1] in PATH_KEYS and text and text[0] not in "{[?'\"~/"
        if is_path:
            try:  # only a plain string is a path: `null`, a number or a mapping is the recipe's to judge
                is_path = isinstance(parse_yaml(text), str)
            except Exception:  # bad YAML is reported by the loader, with its position
                is_path = False
        out.append(f"{key}{sep}{os.path.abspath(text)}" if sep and is_path else item)
    return out


def load_validated_recipe(recipe: str, overrides: Sequence[str]) -> Recipe:
    """The recipe file with its ``--set`` overrides, checked against the loaded registry, against this machine
    (``run.device``, memory: :func:`~rcm_registry.recipe.machine_check.machine_problems`) and by its dataset
    (:func:`check_recipe_data`): ``rcm validate`` and ``rcm run``, before a run directory."""
    from rcm_registry.errors import RecipeError
    from rcm_registry.plugin_loading import registry
    from rcm_registry.recipe.load import load_recipe
    from rcm_registry.recipe.machine_check import machine_problems
    from rcm_registry.recipe.validate import validate_recipe

    data = load_recipe(recipe, absolute_path_overrides(overrides))
    checked = validate_recipe(data, registry(), source=recipe)
    problems = machine_problems(checked)
    if problems:
        raise RecipeError(problems, source=recipe)
    check_recipe_data(checked)
    return checked


def check_recipe_data(recipe: Recipe) -> None:
    """The notes of the recipe's dataset's own check of its files (:class:`rcm_registry.protocols.ChecksData`),
    as ``note:`` lines on stderr; its problems are the recipe's (validation lists them with the others)."""
    from rcm_registry.protocols import data_check

    spec = recipe.body.data
    if spec is None:
        return
    for note in data_check(spec.config).notes:
        print(f"note: data ({spec.name}): {note}", file=sys.stderr)


def report_plugin_failures(reg: Registry) -> None:
    """One warning line on stderr per plugin that failed to import, naming its distribution."""
    for failure in reg.failures:
        print(
            f"warning: plugin {failure.name!r} from {failure.distribution} failed to load: {failure.error}",
            file=sys.stderr,
        )
