"""Read a recipe: YAML (a safe loader only), ``base:`` inheritance and ``--set`` overrides.

The result is plain data (dicts, lists, strings, numbers, booleans, None); :mod:`rcm_registry.recipe.validate`
turns it into validated component specs. Relative ``base:`` paths are resolved against the including file.

The loader (:class:`RecipeLoader`, PyYAML's SafeLoader with three changes) is stricter than ``yaml.safe_load``:

* a key written twice in one mapping is an error naming both lines (PyYAML would keep the last silently);
* explicit tags other than the plain ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!map``, ``!!seq``) are errors naming the tag, ``!!python/...`` among them; dates stay strings;
* exponent floats without a dot or an exponent sign (``1e-3``, ``1E5``, ``2.5e4``), which YAML 1.1 reads as
  strings, are floats, as in YAML 1.2, in recipe files and ``--set`` values alike.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from rcm_registry.errors import RecipeError

_INDEX = re.compile(r"^(?P<key>[^\[\]]*)(?P<indices>(\[\d+\])*)$")

_YAML_TAG = "tag:yaml.org,2002:"
#: Tags a recipe may carry, implicitly or written out: plain data only.
_PLAIN_TAGS = {_YAML_TAG + name for name in ("str", "int", "float", "bool", "null", "map", "seq")}
#: YAML 1.2 exponent floats that YAML 1.1 leaves as strings: 1e-3, 1E5, 2.5e4, .5e-2.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class RecipeYamlError(yaml.MarkedYAMLError):
    """A recipe YAML problem the loader itself finds (duplicate key, tag that is not allowed), at a mark."""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader for recipes: duplicate keys and non-plain tags are errors; YAML 1.2 exponent floats."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag not in _PLAIN_TAGS:
            raise RecipeYamlError(
                problem=f"tag {_short_tag(node.tag)} is not allowed in a recipe (plain YAML only: mappings, "
                "lists, strings, numbers, booleans, null)",
                problem_mark=node.start_mark,
            )
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _YAML_TAG + "merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # merges may override; non-scalar keys are refused by SafeLoader itself
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise RecipeYamlError(
                    problem=f"duplicate key {key!r} (first at line {first_line[key]}, again at line {line}); "
                    "YAML would keep only the last one",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


# Dates stay strings (YAML 1.2 has no timestamps); exponent floats resolve as floats.
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _YAML_TAG + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_YAML_TAG + "float", _EXPONENT_FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """``text`` read with :class:`RecipeLoader` (raises ``yaml.YAMLError``, :class:`RecipeYamlError` among them)."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass: no arbitrary objects


def _yaml_problem(exc: yaml.YAMLError, where: str) -> str:
    """One line for a YAML error: ``FILE:LINE:COL: problem`` (``where`` names the file or the --set)."""
    mark = getattr(exc, "problem_mark", None)
    at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, RecipeYamlError):
        return f"{at}: {problem}"
    return f"{at}: invalid YAML: {problem}"


def _read_yaml(path: Path, chain: list[Path]) -> dict[str, Any]:
    via = f" (base of {chain[-1]})" if chain else ""
    if not path.exists():
        raise RecipeError([f"recipe file not found: {path}{via}"])
    if path.is_dir():
        raise RecipeError([f"recipe path is a directory, expected a YAML file: {path}{via}"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"cannot read recipe {path}: {exc}"]) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise RecipeError([_yaml_problem(exc, str(path))]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: the top level must be a mapping, got {type(data).__name__}"])
    return data


def _same_component(base: Mapping[str, Any], override: Mapping[str, Any]) -> bool:
    """False when both name a component and the names differ: then the override replaces the base."""
    return not ("use" in base and "use" in override and base["use"] != override["use"])


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``.

    Mappings merge key by key, except that a mapping naming a different component (``use:``) replaces
    the inherited one, whose settings belong to the other component; anything else replaces.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and _same_component(old, value):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(path: Path, chain: list[Path]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in [*chain[chain.index(path) :], path])
        raise RecipeError([f"base: inheritance cycle: {cycle}"])
    data = _read_yaml(path, chain)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError([f"{path}: base: expected a path or a list of paths, got {bases!r}"])
    merged: dict[str, Any] = {}
    for base in bases:  # later bases override earlier ones; the file itself overrides all
        merged = merge(merged, _resolve(path.parent / base, [*chain, path]))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``a.b[1].c=value`` → (["a", "b", 1, "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set {text}: expected KEY=VALUE (e.g. --set run.iterations=100)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ValueError(f"--set {text}: the key before '=' is empty")
    parts: list[str | int] = []
    for piece in key.split("."):
        m = _INDEX.match(piece)
        if m is None or (not m.group("key") and not m.group("indices")):
            raise ValueError(f"--set {text}: cannot read key {key!r}")
        if m.group("key"):
            parts.append(m.group("key"))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", m.group("indices"))]
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except RecipeYamlError as exc:
        raise ValueError(f"--set {text}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ValueError(f"--set {text}: the value is not valid YAML") from None
    return parts, value


def _format(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def apply_override(data: dict[str, Any], parts: list[str | int], value: Any) -> str | None:
    """Set ``value`` at ``parts`` inside ``data``; returns a problem line instead of raising."""
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"--set {_format(parts)}: {_format(parts[: i + 1])} does not exist"
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"--set {_format(parts)}: {_format(parts[:i])} is not a mapping"
        if part not in node or node[part] is None:
            if isinstance(nxt, int):
                return f"--set {_format(parts)}: {_format(parts[: i + 1])} does not exist"
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return f"--set {_format(parts)}: index {last} is out of range"
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"--set {_format(parts)}: {_format(parts[:-1])} is not a mapping"
    return None


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The recipe at ``path`` with its bases merged in and ``overrides`` applied (plain data).

    Raises :class:`RecipeError` listing every problem (unreadable files, YAML errors, base cycles,
    malformed overrides).
    """
    return apply_overrides(_resolve(Path(path), []), overrides, source=str(path))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], *, source: str) -> dict[str, Any]:
    """``data`` with every ``KEY=VALUE`` of ``overrides`` applied in place (and returned).

    Raises :class:`RecipeError` listing every malformed override or path that does not exist, naming
    ``source`` (the recipe they apply to).
    """
    problems: list[str] = []
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        problem = apply_override(data, parts, value)
        if problem:
            problems.append(problem)
    if problems:
        raise RecipeError(problems, source=source)
    return data
