"""pyproject.toml lists every package: each folder with an ``__init__.py`` under the mapped package dirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def packages_on_disk() -> set[str]:
    """Import names of the folders holding an ``__init__.py``, through ``package-dir`` (plugins/ -> rcm_plugins)."""
    found = set()
    for import_name, folder in SETUPTOOLS["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((import_name, *parts)))
    return found


def test_package_dir_covers_the_source_folders() -> None:
    assert sorted(SETUPTOOLS["package-dir"].values()) == ["plugins", "rcm_kernels", "rcm_registry"]


def test_packages_list_is_the_folders_with_an_init() -> None:
    listed, on_disk = set(SETUPTOOLS["packages"]), packages_on_disk()
    assert len(SETUPTOOLS["packages"]) == len(listed), "a package is listed twice"
    assert sorted(on_disk - listed) == [], "folders with an __init__.py missing from [tool.setuptools] packages"
    assert sorted(listed - on_disk) == [], "listed in [tool.setuptools] packages but no such folder with __init__.py"


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Packages that exist only for GPUs (Triton ships with CUDA builds of torch; NVIDIA's CUDA wheels).
GPU_ONLY = ("triton", "pytorch-triton", "nvidia-")


def requirement_name(line: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(line).name.lower()


def test_a_cpu_install_pulls_no_gpu_only_package() -> None:
    names = [requirement_name(line) for line in PROJECT["dependencies"]]
    assert [n for n in names if n.startswith(GPU_ONLY)] == [], "a GPU-only package among the dependencies"
    assert "triton" in [requirement_name(line) for line in PROJECT["optional-dependencies"]["kernels"]]


def test_the_test_extra_holds_every_optional_extra() -> None:
    """The suite tests every optional feature, so `pip install -e ".[test]"` (CI) installs all of them."""
    extras = PROJECT["optional-dependencies"]
    test = set(extras["test"])
    for name, requirements in extras.items():
        assert sorted(set(requirements) - test) == [], f"extra {name!r} has requirements the test extra lacks"


def test_no_folder_of_the_checkout_shadows_another_distributions_package() -> None:
    # Wherever the checkout's root is on sys.path (`python -m` from it, this test run), each top-level folder
    # with an __init__.py is importable under its own name, ahead of installed packages: a folder named like
    # a package another distribution installs hides it (kernels/ hid Hugging Face's `kernels`, which
    # transformers imports, once transformers came to depend on it).
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    ours = {"rcm-registry", "rcm_registry"}
    folders = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert "rcm_registry" in folders
    clashes = {name: owners[name] for name in folders if set(owners.get(name, [])) - ours}
    assert not clashes, f"top-level folders named like other distributions' packages: {clashes}"
    # And the folders' names say what they are imported as, except plugins/ (rcm_plugins: see pyproject.toml).
    assert {name for name in folders if not name.startswith("rcm_")} <= {"plugins", "benchmarks", "tests"}
