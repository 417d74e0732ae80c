"""The core package's modules import each other without a cycle (read from the source, not by importing it).

Module-level imports count, including those under ``if TYPE_CHECKING:`` (a cycle for the type checker is
still two modules that each need the other); imports inside functions are the way to defer a dependency
and do not. The parent packages that Python imports before any submodule are left out: a package
``__init__`` that re-exports its submodules would otherwise be in a cycle with every one of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import rcm_registry

PACKAGE = "rcm_registry"
PACKAGE_DIR = Path(rcm_registry.__file__).resolve().parent


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module body, also inside top-level ``if``/``try``/``with`` blocks."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from module_level_imports(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from module_level_imports(handler.body)


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``node`` (in ``module``) imports by name."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    found: set[str] = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in known:
            found.add(submodule)
        elif source in known:  # a name defined in ``source`` itself
            found.add(source)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in module_level_imports(tree.body):
            edges |= imported_modules(node, name, path.name == "__init__.py", known)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as its modules in order (the first repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_core_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert "rcm_registry.structure" in graph["rcm_registry.registry"]  # the walk sees module-level imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in rcm_registry: " + " -> ".join(cycle or [])


def test_walk_resolves_relative_type_checking_and_package_imports(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from pkg.a import thing\n")
    (root / "a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from .sub import b\nthing = 1\n")
    (root / "sub/__init__.py").write_text("")
    (root / "sub/b.py").write_text("from .. import a\n\ndef later():\n    from pkg.sub import c\n")
    (root / "sub/c.py").write_text("from pkg import thing\n")
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},  # the import inside a function does not count
        "pkg.sub.c": {"pkg"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_find_cycle_on_an_acyclic_graph() -> None:
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
