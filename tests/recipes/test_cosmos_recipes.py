"""The Cosmos-Predict2 codecs of recipes/_base/cosmos_predict2_codecs.yaml (t5, cosmos_vae) through the loop
the production recipes' headers give, on tiny random models: rcm synth → rcm run → rcm generate, for a
Text2Image teacher and for a Video2World one with its conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rcm_plugins.data.latent_shards_format import ShardIndex
from rcm_plugins.data.tiny import write_tiny_codecs
from safetensors.torch import load_file, save_file

from rcm_registry.testing import CliResult, run_cli

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red fox in the snow", "a dog on the sea", "the cat"]
TEXT_DIM = 24  # the tiny Cosmos network's


@pytest.fixture(scope="module")
def codecs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A diffusers-like folder: tiny T5 text_encoder/ (Cosmos' encoder class), tokenizer/ and vae/."""
    from transformers import T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("cosmos-codecs")
    paths = write_tiny_codecs(root / "codecs", text_dim=TEXT_DIM)
    config = T5Config(
        vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=1, num_heads=3, pad_token_id=0, eos_token_id=1
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(str(paths["text_encoder"]))  # replaces the umT5 one
    paths["prompts"] = root / "prompts.txt"
    paths["prompts"].write_text("\n".join(PROMPTS) + "\n")
    return paths


def tiny_recipe(tmp_path: Path, teacher: str | None = None) -> str:
    """t2i_tiny_rcm.yaml on latent shards with the production recipes' codecs base (paths still ???)."""
    path = tmp_path / "recipe.yaml"
    bases = [ROOT / "recipes/cosmos-predict2/t2i_tiny_rcm.yaml", ROOT / "recipes/_base/cosmos_predict2_codecs.yaml"]
    text = f"base: [{', '.join(map(str, bases))}]\ndata: {{use: latent_shards, path: '???', shuffle_window: 2}}\n"
    if teacher is not None:
        text += f"networks:\n  teacher: {teacher}\n"
    path.write_text(text)
    return str(path)


def codec_sets(codecs: dict[str, Path], *, vae: bool = True) -> list[str]:
    sets = ["--set", f"codecs.text.path={codecs['text_encoder']}"]
    return [*sets, "--set", f"codecs.vae.path={codecs['vae']}"] if vae else sets


def synth_args(recipe: str, codecs: dict[str, Path], out: Path, shape: str, *extra: str) -> list[str]:
    return [
        "synth", recipe, "--prompts", str(codecs["prompts"]), "--out", str(out), "--shape", shape, "--steps", "3",
        "--shift", "3", "--sigma-max", "80", "--shard-size", "2", "--no-progress", *codec_sets(codecs, vae=False),
        *extra,
    ]  # fmt: skip


def train(recipe: str, codecs: dict[str, Path], data: Path, run: Path) -> CliResult:
    return run_cli("run", recipe, "--out", str(run), "--no-progress", "--set", f"data.path={data}", *codec_sets(codecs))


def test_t2i_synth_run_generate_with_the_cosmos_codecs(codecs: dict[str, Path], tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    data = tmp_path / "data"
    made = run_cli(*synth_args(recipe, codecs, data, "16,1,4,4", "--negative-prompt", "night"))
    assert made.code == 0, made.err
    index = ShardIndex.read(data)
    assert index.total == len(PROMPTS) and index.tensors["text"].shape == (512, TEXT_DIM)  # t5, max_length 512
    assert index.negative is not None

    run = tmp_path / "run"
    trained = train(recipe, codecs, data, run)
    assert trained.code == 0, trained.err
    picture = tmp_path / "fox.png"
    made = run_cli("generate", str(run), "--prompt", PROMPTS[0], "--steps", "2", "--out", str(picture), "--no-progress")
    assert made.code == 0, made.err
    assert picture.is_file() and "latents [16, 1, 4, 4]" in made.out


def test_v2w_synth_run_generate_with_conditions(codecs: dict[str, Path], tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "{use: cosmos-predict2-v2w, size: tiny, attention: {use: math}}")
    latents = torch.randn(len(PROMPTS), 16, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(len(PROMPTS), 1, 3, 4, 4)
    mask[:, :, 0] = 1.0  # the first latent frame conditions the rest
    conditions = tmp_path / "conditions.safetensors"
    save_file({"cond.condition_latents": latents, "cond.condition_mask": mask}, str(conditions))
    data = tmp_path / "data"

    refused = run_cli(*synth_args(recipe, codecs, data, "16,3,4,4"))
    assert refused.code == 2 and "cond.condition_latents (16, 3, 4, 4)" in refused.err and not data.exists()
    made = run_cli(*synth_args(recipe, codecs, data, "16,3,4,4", "--conditions", str(conditions)))
    assert made.code == 0, made.err
    assert ShardIndex.read(data).info["conditions"] == ["condition_latents", "condition_mask"]

    run = tmp_path / "run"
    trained = train(recipe, codecs, data, run)
    assert trained.code == 0, trained.err

    # rcm sample draws the conditions (and prompts) from the training shards.
    sampled = run_cli("sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.safetensors"))
    assert sampled.code == 0, sampled.err
    drawn = load_file(str(tmp_path / "s.safetensors"))
    assert drawn["condition.condition_mask"].shape == (2, 1, 3, 4, 4)

    # rcm generate takes one row of them, and refuses without.
    out = tmp_path / "robot.safetensors"
    without = run_cli("generate", str(run), "--prompt", PROMPTS[0], "--steps", "2", "--out", str(out), "--no-progress")
    assert without.code == 2 and "condition_latents" in without.err and not out.exists()
    one = tmp_path / "one.safetensors"
    save_file({"cond.condition_latents": latents[:1].clone(), "cond.condition_mask": mask[:1].clone()}, str(one))
    made = run_cli(
        "generate", str(run), "--prompt", PROMPTS[0], "--steps", "2", "--conditions", str(one), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert made.code == 0, made.err
    generated = load_file(str(out))["latents"]  # .safetensors: latents, no decoding
    assert generated.shape == (16, 3, 4, 4)
    # cosmos_edm keeps the conditioning frame: the student's sample starts from the given image latents.
    torch.testing.assert_close(generated[:, 0], latents[0, :, 0], atol=1e-4, rtol=1e-4)
