"""Recipe files: YAML reading, base inheritance (with cycles), and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcm_registry.errors import RecipeError
from rcm_registry.recipe.load import apply_override, load_recipe, merge, parse_override


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_merges_deeply_and_child_wins(tmp_path: Path) -> None:
    write(tmp_path / "_base/a.yaml", "run: {iterations: 10, seed: 1}\nx: {y: 1, z: [1, 2]}\n")
    write(tmp_path / "_base/b.yaml", "base: a.yaml\nrun: {seed: 2}\n")
    child = write(tmp_path / "c.yaml", "base: _base/b.yaml\nx: {z: [3]}\n")
    assert load_recipe(child) == {"run": {"iterations": 10, "seed": 2}, "x": {"y": 1, "z": [3]}}


def test_multiple_bases_later_wins(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "k: 1\nm: a\n")
    write(tmp_path / "b.yaml", "k: 2\n")
    child = write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n")
    assert load_recipe(child) == {"k": 2, "m": "a"}


def test_base_cycle_is_reported_with_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match=r"inheritance cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_recipe(tmp_path / "a.yaml")


def test_self_base_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_missing_base_names_the_including_file(tmp_path: Path) -> None:
    child = write(tmp_path / "c.yaml", "base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match=r"recipe file not found: .*nowhere\.yaml \(base of .*c\.yaml\)"):
        load_recipe(child)


def test_yaml_error_has_file_line_and_column(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "run:\n  iterations: [1, 2\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_recipe(bad)


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(bad)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(write(tmp_path / "l.yaml", "- 1\n- 2\n"))


@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("run.iterations=100", ["run", "iterations"], 100),
        ("a.b[1].c=1e-5", ["a", "b", 1, "c"], "1e-5"),
        ("a.b=2.0e-5", ["a", "b"], 2.0e-5),
        ("x=[1, 2]", ["x"], [1, 2]),
        ("x={use: sdpa}", ["x"], {"use": "sdpa"}),
        ("flag=true", ["flag"], True),
        ("s=hello world", ["s"], "hello world"),
        ("n=null", ["n"], None),
    ],
)
def test_parse_override(text: str, parts: list, value: object) -> None:
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text", ["no_equals", "=3", "a..b=1", "x=[1, 2"])
def test_bad_overrides(text: str) -> None:
    with pytest.raises(ValueError, match="--set"):
        parse_override(text)


def test_apply_override_creates_mappings_but_not_list_items() -> None:
    data: dict = {"a": {"b": [{"c": 1}]}}
    assert apply_override(data, ["a", "b", 0, "c"], 5) is None
    assert apply_override(data, ["new", "key"], 1) is None
    assert data == {"a": {"b": [{"c": 5}]}, "new": {"key": 1}}
    assert "out of range" in (apply_override(data, ["a", "b", 3], 1) or "")
    assert "not a mapping" in (apply_override(data, ["a", "b", 0, "c", "d"], 1) or "")


def test_all_override_problems_reported_together(tmp_path: Path) -> None:
    r = write(tmp_path / "r.yaml", "a: {b: [1]}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(r, ["oops", "a.b[4]=1", "a.b[0].x=2"])
    assert len(info.value.problems) == 3


def test_merge_does_not_mutate_inputs() -> None:
    a = {"x": {"y": [1]}}
    b = {"x": {"z": 2}}
    out = merge(a, b)
    out["x"]["y"].append(2)
    assert a == {"x": {"y": [1]}} and b == {"x": {"z": 2}}


def test_a_different_component_replaces_instead_of_merging(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "data: {use: shards, path: /x, workers: 2}\nopt: {use: adamw, lr: 1}\n")
    child = write(tmp_path / "c.yaml", "base: a.yaml\ndata: {use: random, seed: 3}\nopt: {lr: 2}\n")
    assert load_recipe(child) == {"data": {"use": "random", "seed": 3}, "opt": {"use": "adamw", "lr": 2}}


def test_validation_keeps_loss_starts_in_the_saved_recipe() -> None:
    from rcm_registry import registry
    from rcm_registry.recipe.validate import validate_recipe

    root = Path(__file__).resolve().parents[3]
    recipe = validate_recipe(load_recipe(root / "recipes/quickstart/rcm.yaml"), registry(), open_files=False)
    assert any("start" in loss for loss in recipe.data["phases"]["student"]["losses"])
