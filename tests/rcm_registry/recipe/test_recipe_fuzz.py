"""Every wrong shape of input is a RecipeError, never another exception: each value of a real recipe (every
top-level section and everything inside it) and each of its mappings' keys, replaced by wrong shapes."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rcm_registry import registry
from rcm_registry.errors import RecipeError
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "recipes/quickstart/rcm.yaml"
#: Recipes whose components check more against the recipe (network families, experts, codecs).
MORE_RECIPES = [
    ROOT / f"recipes/{name}"
    for name in ("wan2.2/t2v_a14b_tiny_high_noise_rcm.yaml", "cosmos-predict2/t2i_tiny_rcm.yaml")
]

#: Values of every shape: containers where scalars belong and back, None, bools, numbers of every size,
#: non-string keys, placeholders, strings that look like numbers.
WRONG_VALUES: list[Any] = [
    None, True, False, 0, -1, 3, 2.5, 1e23, -1e39, float("inf"), float("nan"), 10**30, "", "abc", "???", "1e-3",
    [], [1, 2], [None], [[1]], [{"use": 1}], {}, {"x": 1}, {1: 2}, {True: "a"}, {None: None}, {"use": None},
    {"use": ["scm"]}, {"use": "scm", 1: 2},
]  # fmt: skip
#: Keys a mapping may be given instead of a name.
WRONG_KEYS: list[Any] = [1, 2.5, True, None, "", "1"]


def _paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _with(data: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(data)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _with_key(data: dict, path: tuple, key: Any) -> dict:
    """``data`` with the mapping at ``path`` also holding ``key`` (a copy of its first value), and with its first
    key renamed to ``key``."""
    out = copy.deepcopy(data)
    node: Any = out
    for k in path:
        node = node[k]
    first = next(iter(node))
    node[key] = node.pop(first)
    return out


#: A problem line starts with the YAML path it is about (``phases.student.losses[0].weight: ...``), possibly
#: followed by the component's name (``sample (trigflow_multistep): ...``).
PROBLEM = re.compile(r"^[\w.\[\]'-]+(?: \([\w.-]+\))?: \S")


def _check(data: dict) -> None:
    try:
        validate_recipe(data, registry(), source="fuzz", open_files=False)
    except RecipeError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert PROBLEM.match(problem), f"a problem must start with its YAML path: {problem!r}"


BASE = load_recipe(RECIPE)


def _at(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


VALUE_PATHS = [p for p in _paths(BASE) if p]
MAPPING_PATHS = [p for p in _paths(BASE) if isinstance(_at(BASE, p), dict) and _at(BASE, p)]


def test_the_recipe_is_valid_and_the_fuzz_covers_every_section() -> None:
    validate_recipe(BASE, registry(), source=str(RECIPE), open_files=False)
    sections = {p[0] for p in VALUE_PATHS}
    assert sections == set(BASE) and len(sections) >= 10
    assert len(VALUE_PATHS) >= 60


@pytest.mark.parametrize("path", VALUE_PATHS, ids=[".".join(map(str, p)) for p in VALUE_PATHS])
def test_wrong_values_are_recipe_errors(path: tuple) -> None:
    for value in WRONG_VALUES:
        _check(_with(BASE, path, value))


@pytest.mark.parametrize("path", MAPPING_PATHS, ids=[".".join(map(str, p)) or "<top>" for p in MAPPING_PATHS])
def test_wrong_keys_are_recipe_errors(path: tuple) -> None:
    for key in WRONG_KEYS:
        _check(_with_key(BASE, path, key))


@pytest.mark.parametrize("recipe", MORE_RECIPES, ids=[p.stem for p in MORE_RECIPES])
def test_other_recipes_take_wrong_values_as_recipe_errors(recipe: Path) -> None:
    base = load_recipe(recipe)
    validate_recipe(base, registry(), source=str(recipe), open_files=False)
    for path in (p for p in _paths(base) if p):
        for value in WRONG_VALUES:
            _check(_with(base, path, value))


@pytest.mark.parametrize("value", WRONG_VALUES, ids=[repr(v)[:20] for v in WRONG_VALUES])
def test_wrong_values_as_whole_recipes_or_added_sections(value: Any) -> None:
    _check({"networks": value, "phases": value, "time": value, "run": value, "data": value})
    _check({**BASE, "unknown_section": value})
