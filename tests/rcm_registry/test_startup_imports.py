"""`rcm list`, `rcm plugins` and `rcm validate` stay quick to start: heavy optional packages are imported only by
the code that uses them (inside functions), never by loading the registry or checking a recipe.

A regression test by what is imported, not by a timing (benchmarks/cli_startup.py measures the wall clock).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Imported by none of those commands; each costs from a few tenths of a second to seconds to import.
HEAVY = (
    "diffusers",
    "transformers",
    "triton",
    "matplotlib",
    "tensorboard",
    "wandb",
    "imageio",
    "torch.distributed.fsdp",
    "torch.utils.tensorboard",
    "torch._dynamo",  # imported by the first Python reference kernel on the meta device (parameter counts)
    "sympy",  # imported by the first meta op that computes values (parameter counts build without them)
)
RECIPES = (
    "recipes/quickstart/teacher.yaml",
    "recipes/wan2.1/t2v_tiny_rcm.yaml",
    "recipes/cosmos-predict2/t2i_tiny_rcm.yaml",
    "recipes/digits/teacher.yaml",
    "recipes/wan2.2/t2v_a14b_tiny_rcm.yaml",
    "recipes/wan2.2/ti2v_tiny_rcm.yaml",
    "recipes/moving_digits/teacher_tiny.yaml",
)

PROGRAM = """
import contextlib, io, json, sys
from rcm_registry.cli import main
from rcm_registry.plugin_loading import registry
codes = []
with contextlib.redirect_stdout(io.StringIO()):
    codes.append(main(["list"]))
    codes.append(main(["plugins"]))
    for recipe in sys.argv[2:]:
        codes.append(main(["validate", recipe, *sys.argv[1].split()]))
reg = registry()
print(json.dumps({"codes": codes, "plugins": [p.name for p in reg.plugins], "failures": len(reg.failures),
                  "heavy": sorted(m for m in sys.modules if m in HEAVY)}))
"""


def run_commands(*recipes: str, overrides: str = "") -> dict:
    code = f"HEAVY = {HEAVY!r}\n{PROGRAM}"
    proc = subprocess.run(
        [sys.executable, "-c", code, overrides, *recipes], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_list_plugins_and_validate_import_no_heavy_package() -> None:
    for recipe in RECIPES:
        assert (ROOT / recipe).is_file(), recipe
    result = run_commands(*RECIPES)
    assert result["codes"] == [0] * (2 + len(RECIPES))
    assert result["failures"] == 0 and {"core", "distill", "wan", "cosmos", "data", "digits"} <= set(result["plugins"])
    assert result["heavy"] == [], f"imported by rcm list / plugins / validate: {result['heavy']}"


def test_the_check_sees_an_import() -> None:
    """The same program reports a heavy module once something imports it (the test above can fail)."""
    code = f"import matplotlib\nHEAVY = {HEAVY!r}\n{PROGRAM}"
    proc = subprocess.run([sys.executable, "-c", code, ""], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["heavy"] == ["matplotlib"]
