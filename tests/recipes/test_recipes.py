"""Every shipped recipe validates (placeholders filled in), and the tiny Wan recipe runs end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rcm_registry import registry
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.schema import MISSING
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "_base" not in p.parts)


def fill_placeholders(node: Any, path: str = "") -> list[str]:
    """``--set`` overrides giving every ``???`` a stand-in value (validated with ``open_files=False``)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in fill_placeholders(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in fill_placeholders(v, f"{path}[{i}]")]
    return [f"{path}=/placeholder"] if node == MISSING else []


def validated(recipe: Path) -> Recipe:
    overrides = fill_placeholders(load_recipe(recipe))
    return validate_recipe(load_recipe(recipe, overrides), registry(), str(recipe), open_files=False)


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_validates(recipe: Path) -> None:
    validated(recipe)


#: The codecs (text, vae) a network family's `rcm synth` / `rcm generate` need, by network name prefix.
FAMILY_CODECS = {
    "wan2.1-": ("umt5", "wan_vae"),
    "wan2.2-ti2v-": ("umt5", "wan2.2_vae"),  # the Wan2.2 VAE; the A14B experts use Wan2.1's
    "wan2.2-": ("umt5", "wan_vae"),
    "cosmos-predict2-": ("t5", "cosmos_vae"),
}
ON_SYNTH_DATA = [p for p in RECIPES if load_recipe(p).get("data", {}).get("use") == "latent_shards"]


@pytest.mark.parametrize("recipe", ON_SYNTH_DATA, ids=[str(p.relative_to(ROOT / "recipes")) for p in ON_SYNTH_DATA])
def test_recipes_on_synthesised_data_declare_the_codecs_of_their_teacher(recipe: Path) -> None:
    """`rcm synth` encodes the prompts with codecs.text, `rcm generate` also decodes with codecs.vae."""
    checked = validated(recipe)
    teacher = checked.networks["teacher"].spec.name
    text, vae = next(codecs for prefix, codecs in FAMILY_CODECS.items() if teacher.startswith(prefix))
    assert {k: v.name for k, v in checked.body.codecs.items()} == {"text": text, "vae": vae}


@pytest.mark.parametrize("recipe", ON_SYNTH_DATA, ids=[str(p.relative_to(ROOT / "recipes")) for p in ON_SYNTH_DATA])
def test_recipes_on_synthesised_data_leave_the_data_and_codec_paths_to_the_user(recipe: Path) -> None:
    """``???``: `rcm validate`/`rcm run` name each path until it is given (`rcm synth` fills in data.path)."""
    raw = load_recipe(recipe)
    assert raw["data"]["path"] == MISSING
    assert {name: codec["path"] for name, codec in raw["codecs"].items()} == {"text": MISSING, "vae": MISSING}


def test_production_wan_recipes_train_on_synthesised_data() -> None:
    names = {str(p.relative_to(ROOT / "recipes")) for p in ON_SYNTH_DATA}
    assert {"wan2.1/t2v_1.3b_rcm.yaml", "wan2.1/t2v_14b_rcm.yaml"} <= names


#: The Cosmos-Predict2 production recipes: teacher samples from `rcm synth`, codecs from one shared base.
COSMOS_PRODUCTION = [
    "cosmos-predict2/t2i_2b_rcm.yaml",
    "cosmos-predict2/t2i_14b_rcm.yaml",
    "cosmos-predict2/v2w_2b_rcm.yaml",
]


@pytest.mark.parametrize("name", COSMOS_PRODUCTION)
def test_production_cosmos_recipes_train_on_synthesised_data_with_the_cosmos_codecs(name: str) -> None:
    assert name in {str(p.relative_to(ROOT / "recipes")) for p in ON_SYNTH_DATA}
    checked = validated(ROOT / "recipes" / name)
    assert checked.body.data.name == "latent_shards"
    assert {k: v.name for k, v in checked.body.codecs.items()} == {"text": "t5", "vae": "cosmos_vae"}
    assert checked.body.codecs["text"].config.max_length == 512  # the T5 tokens of Cosmos' pipelines
    base = load_recipe(ROOT / "recipes/_base/cosmos_predict2_codecs.yaml")
    assert load_recipe(ROOT / "recipes" / name)["codecs"] == base["codecs"]


def test_v2w_recipe_names_the_conditions_its_teacher_needs() -> None:
    """The shapes its header gives for `rcm synth --conditions` are the network's at the training shape."""
    from rcm_registry.conditions import network_conditions

    recipe = ROOT / "recipes/cosmos-predict2/v2w_2b_rcm.yaml"
    needs = network_conditions(validated(recipe).networks["teacher"].spec, (16, 24, 88, 160))
    assert needs == {"condition_latents": (16, 24, 88, 160), "condition_mask": (1, 24, 88, 160)}
    header = recipe.read_text()
    assert "--shape 16,24,88,160" in header and "--conditions" in header
    assert "condition_latents (16 x 24 x 88 x 160" in header and "condition_mask (1 x 24 x 88 x 160" in header


def test_there_are_recipes_for_every_family() -> None:
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for expected in ("quickstart/teacher.yaml", "quickstart/rcm.yaml", "wan2.1/t2v_1.3b_rcm.yaml",
                     "wan2.1/t2v_14b_rcm.yaml", "wan2.1/t2v_tiny_rcm.yaml"):  # fmt: skip
        assert expected in names


def test_tiny_wan_recipe_runs_samples_and_exports(tmp_path: Path) -> None:
    recipe = str(ROOT / "recipes/wan2.1/t2v_tiny_rcm.yaml")
    run_dir = tmp_path / "run"
    result = run_cli("run", recipe, "--out", str(run_dir), "--no-progress")
    assert result.code == 0, result.err
    sampled = run_cli("sample", str(run_dir), "--steps", "2", "--num", "2", "--out", str(tmp_path / "s.safetensors"))
    assert sampled.code == 0, sampled.err
    exported = run_cli("export", str(run_dir), "--out", str(tmp_path / "export"), "--dtype", "fp32")
    assert exported.code == 0, exported.err
    assert (tmp_path / "export" / "config.json").is_file()
