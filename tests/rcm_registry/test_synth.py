"""``rcm synth``: the teacher's samples in latent shards, each prompt exactly once across interruptions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rcm_plugins.data.latent_shards_format import NEGATIVE_NAME, ShardIndex, TensorSpec
from rcm_plugins.data.tiny import write_tiny_codecs
from safetensors.torch import load_file, save_file

import rcm_registry as rr
from rcm_registry import synth
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/wan2.1/t2v_tiny_synth.yaml")
SHAPE = "16,3,4,4"
PROMPTS = [
    "a red fox in the snow",
    "a dog on the sea",
    "a blue car at night",
    "the cat",
    "a green sky",
    "a fox with a dog",
    "the sea at day",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth-assets")
    paths = write_tiny_codecs(root / "codecs")
    torch.manual_seed(0)
    teacher = rr.registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    paths["teacher"] = teacher.export(root / "teacher", format="native")
    paths["prompts"] = root / "prompts.txt"
    paths["prompts"].write_text("\n".join(PROMPTS) + "\n\n")  # a trailing blank line is not a prompt
    return paths


def recipe_sets(assets: dict[str, Path]) -> list[str]:
    return [
        "--set",
        f"networks.teacher.weights.path={assets['teacher']}",
        "--set",
        f"codecs.text.path={assets['text_encoder']}",
    ]


def synth_args(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "synth",
        RECIPE,
        "--prompts",
        str(assets["prompts"]),
        "--out",
        str(out),
        "--shape",
        SHAPE,
        "--steps",
        "3",
        "--shard-size",
        "3",
        "--negative-prompt",
        "night",
        "--no-progress",
        *recipe_sets(assets),
        *extra,
    ]


def stored(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every sample of a dataset directory by prompt index; fails on a prompt stored twice."""
    from safetensors import safe_open

    index = ShardIndex.read(out)
    samples: dict[int, dict[str, torch.Tensor]] = {}
    for entry in index.shards:
        tensors = load_file(str(out / entry.file))
        with safe_open(str(out / entry.file), framework="pt") as f:
            captions = json.loads(f.metadata()["captions"])
        for row, i in enumerate(tensors["prompt_index"].tolist()):
            assert i not in samples, f"prompt {i} stored twice"
            samples[i] = {k: v[row] for k, v in tensors.items()}
            assert captions[row] == PROMPTS[i]
    return samples


def test_synth_writes_each_prompt_once(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = run_cli(*synth_args(assets, out))
    assert result.code == 0, result.err
    assert "wrote 3 shard(s), 0 already done, 0 left: 7 samples in 3 shards" in result.out
    samples = stored(out)
    assert sorted(samples) == list(range(7))
    assert samples[0]["latents"].shape == (16, 3, 4, 4) and samples[0]["latents"].dtype == torch.bfloat16
    assert samples[3]["text"].shape == (8, 32) and samples[3]["text_mask"].tolist() == [True] * 3 + [False] * 5
    index = ShardIndex.read(out)
    assert [s.count for s in index.shards] == [3, 3, 1]
    assert index.info["negative_prompt"] == "night" and index.info["guidance"] == 5.0
    negative = load_file(str(out / NEGATIVE_NAME))
    assert negative["text"].shape == (1, 8, 32) and negative["text_mask"].sum() == 2
    assert not list(out.glob(".*"))  # no temporary files left
    again = run_cli(*synth_args(assets, out))
    assert again.code == 0 and "wrote 0 shard(s), 3 already done" in again.out


def test_interrupted_synth_resumes_without_duplicates(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "whole"
    assert run_cli(*synth_args(assets, whole, "--batch-size", "2")).code == 0

    out = tmp_path / "cut"
    real = synth._sample
    calls = 0

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 4:  # the second batch of the second shard: one shard written, one half done
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_sample", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        run_cli(*synth_args(assets, out, "--batch-size", "2"))
    monkeypatch.setattr(synth, "_sample", real)
    assert [s.file for s in ShardIndex.read(out).shards] == ["shard-000000.safetensors"]
    assert not (out / "shard-000001.safetensors").exists()

    partial = run_cli(*synth_args(assets, out, "--batch-size", "2", "--max-shards", "1"))
    assert partial.code == 0 and "wrote 1 shard(s), 1 already done, 1 left" in partial.out
    resumed = run_cli(*synth_args(assets, out, "--batch-size", "2"))
    assert resumed.code == 0 and "wrote 1 shard(s), 2 already done, 0 left" in resumed.out

    got, want = stored(out), stored(whole)
    assert sorted(got) == list(range(7))
    for i in range(7):  # the same noise per prompt: the interrupted dataset is the uninterrupted one
        for key in want[i]:
            assert torch.equal(got[i][key], want[i][key]), (i, key)


@pytest.mark.slow
def test_killed_synth_process_resumes_without_duplicates(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = synth_args(assets, out, "--shard-size", "1", "--steps", "6")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcm_registry.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while not (out / "shard-000001.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(list(out.glob("shard-*.safetensors")))
    resumed = run_cli(*args)
    assert resumed.code == 0, resumed.err
    assert f"{before} already done" in resumed.out
    assert sorted(stored(out)) == list(range(7))
    assert not list(out.glob(".*"))


def test_changed_settings_or_damaged_shards_are_refused(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert run_cli(*synth_args(assets, out, "--max-shards", "2")).code == 0
    changed = run_cli(*synth_args(assets, out, "--seed", "1"))
    assert changed.code == 2 and "seed: 0 then, 1 now" in changed.err
    shard = out / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    damaged = run_cli(*synth_args(assets, out))
    assert damaged.code == 2 and "shard-000001.safetensors: truncated" in damaged.err


def test_sampler_is_a_registry_sampler_with_its_settings_checked(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    unknown = run_cli(*synth_args(assets, out, "--sampler", "trigflow_eulr"))
    assert (
        unknown.code == 2 and "--sampler: unknown sampler 'trigflow_eulr'; did you mean 'trigflow_euler'" in unknown.err
    )
    bad = run_cli(*synth_args(assets, out, "--shift", "-2"))
    assert bad.code == 2 and "--shift: must be > 0, got -2.0 (sampler trigflow_euler)" in bad.err
    foreign = run_cli(*synth_args(assets, out, "--sampler", "trigflow_multistep", "--shift", "3"))
    assert foreign.code == 2 and "--shift: sampler 'trigflow_multistep' has no setting 'shift'" in foreign.err
    assert not out.exists()  # refused before anything is written

    made = run_cli(*synth_args(assets, out, "--sampler", "trigflow_unipc", "--shift", "3", "--max-shards", "1"))
    assert made.code == 0, made.err
    record = json.loads((out / "synth.json").read_text())
    assert record["sampler"] == "trigflow_unipc"
    assert {k: v for k, v in record.items() if k.startswith("sampler.")} == {
        "sampler.steps": 3,
        "sampler.shift": 3.0,
        "sampler.guidance": 5.0,  # the teacher wrapper's, as used
        "sampler.sigma_max": None,
    }
    changed = run_cli(*synth_args(assets, out, "--sampler", "trigflow_unipc", "--shift", "4"))
    assert changed.code == 2 and "sampler.shift: 3.0 then, 4.0 now" in changed.err


def test_a_directory_started_before_samplers_were_components_continues(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert run_cli(*synth_args(assets, out, "--max-shards", "1")).code == 0
    record = json.loads((out / "synth.json").read_text())
    record["sampler"] = "euler"  # the layout of synth.json written by the built-in solver
    record.update({key.removeprefix("sampler."): record.pop(key) for key in list(record) if key.startswith("sampler.")})
    (out / "synth.json").write_text(json.dumps(record))
    resumed = run_cli(*synth_args(assets, out))
    assert resumed.code == 0 and "wrote 2 shard(s), 1 already done" in resumed.out, resumed.err


def test_precomputed_embeddings_need_no_text_codec(assets: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.safetensors"
    text = torch.randn(4, 6, 32)
    text[:, 4:] = 0
    negative = torch.zeros(1, 6, 32)
    save_file({"text": text, "negative_text": negative}, str(prompts))
    out = tmp_path / "data"
    args = ["synth", RECIPE, "--prompts", str(prompts), "--out", str(out), "--shape", SHAPE, "--steps", "3"]
    args += ["--sampler", "trigflow_unipc"]
    result = run_cli(*args, "--set", f"networks.teacher.weights.path={assets['teacher']}", "--no-progress")
    assert result.code == 0, result.err
    index = ShardIndex.read(out)
    assert index.total == 4 and not index.captions and index.negative == NEGATIVE_NAME
    assert index.info["sampler"] == "trigflow_unipc"
    shard = load_file(str(out / index.shards[0].file))
    assert torch.equal(shard["text"], text.to(torch.bfloat16))
    assert shard["text_mask"].tolist() == [[True] * 4 + [False] * 2] * 4


# -- conditions besides the text (image-to-video, video-to-world) -------------------------------------

I2V = ("recipes/wan2.1/t2v_tiny_rcm.yaml", "{use: wan2.1-i2v, size: tiny, attention: {use: math}}")
V2W = ("recipes/cosmos-predict2/t2i_tiny_rcm.yaml", "{use: cosmos-predict2-v2w, size: tiny, attention: {use: math}}")
T2V = ("recipes/wan2.1/t2v_tiny_rcm.yaml", "{use: wan2.1-t2v, size: tiny, attention: {use: math}}")


def tiny_recipe(tmp_path: Path, family: tuple[str, str]) -> str:
    """A tiny recipe with the given teacher (no weights: seeded) training on latent shards."""
    base, teacher = family
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"base: {ROOT / base}\nnetworks:\n  teacher: {teacher}\n"
        "data: {use: latent_shards, path: '???', shuffle_window: 2}\n"
    )
    return str(path)


def embeddings(path: Path, n: int, dim: int) -> Path:
    text = torch.randn(n, 6, dim, generator=torch.Generator().manual_seed(1))
    text[:, 4:] = 0
    save_file({"text": text, "negative_text": torch.zeros(1, 6, dim)}, str(path))
    return path


def i2v_conditions(path: Path, n: int, seed: int = 2, latent_channels: int = 20) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "cond.image": torch.randn(n, 3, 24, generator=g),  # tiny I2V: CLIP tokens of width 24
        "cond.image_latent": torch.randn(n, latent_channels, 3, 4, 4, generator=g),  # 36 − 16 channels
    }
    save_file(tensors, str(path))
    return tensors


def tiny_synth(recipe: str, prompts: Path, out: Path, *extra: str) -> list[str]:
    args = ["synth", recipe, "--prompts", str(prompts), "--out", str(out), "--shape", SHAPE, "--steps", "3"]
    return [*args, "--shard-size", "2", "--no-progress", *extra]


def test_synth_for_a_network_with_more_conditions_than_text_names_what_is_missing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, I2V)
    prompts = embeddings(tmp_path / "prompts.safetensors", 3, 32)
    out = tmp_path / "data"
    missing = run_cli(*tiny_synth(recipe, prompts, out))
    assert missing.code == 2
    assert "networks.teacher (wan2.1-i2v) is conditioned on more than the text" in missing.err
    assert "cond.image (*, 24), cond.image_latent (20, 3, 4, 4) per prompt" in missing.err
    assert "--conditions FILE.safetensors" in missing.err
    assert not out.exists()  # refused before anything is written

    wrong = tmp_path / "wrong.safetensors"
    i2v_conditions(wrong, 3, latent_channels=16)
    shaped = run_cli(*tiny_synth(recipe, prompts, out, "--conditions", str(wrong)))
    assert shaped.code == 2 and "cond.image_latent: [16, 3, 4, 4] per prompt" in shaped.err and not out.exists()

    rows = tmp_path / "rows.safetensors"
    save_file({"cond.image": torch.zeros(2, 3, 24)}, str(rows))
    counted = run_cli(*tiny_synth(recipe, prompts, out, "--conditions", str(rows)))
    assert counted.code == 2 and "[cond.image]: shape [2, 3, 24], expected one row per prompt (3, ...)" in counted.err

    conditions = tmp_path / "conditions.safetensors"
    i2v_conditions(conditions, 3)
    t2v = run_cli(*tiny_synth(tiny_recipe(tmp_path, T2V), prompts, out, "--conditions", str(conditions)))
    assert t2v.code == 2 and "cond.image: networks.teacher (wan2.1-t2v) takes no condition 'image'" in t2v.err


def test_i2v_synth_stores_the_image_conditions_and_training_reads_them(tmp_path: Path) -> None:
    from rcm_plugins.data.latent_shards_dataset import open_dataset

    recipe = tiny_recipe(tmp_path, I2V)
    prompts = embeddings(tmp_path / "prompts.safetensors", 3, 32)
    conditions = i2v_conditions(tmp_path / "conditions.safetensors", 3)
    out = tmp_path / "data"
    result = run_cli(*tiny_synth(recipe, prompts, out, "--conditions", str(tmp_path / "conditions.safetensors")))
    assert result.code == 0, result.err
    index = ShardIndex.read(out)
    assert index.tensors["cond.image"] == TensorSpec("bfloat16", (3, 24))
    assert index.tensors["cond.image_latent"] == TensorSpec("bfloat16", (20, 3, 4, 4))
    assert index.info["conditions"] == ["image", "image_latent"]
    shards = [load_file(str(out / e.file)) for e in index.shards]
    for key in ("cond.image", "cond.image_latent"):
        assert torch.equal(torch.cat([s[key] for s in shards]), conditions[key].to(torch.bfloat16))

    # The teacher saw them: other image conditions, other samples from the same noise.
    other = tmp_path / "other.safetensors"
    i2v_conditions(other, 3, seed=3)
    out2 = tmp_path / "data2"
    assert run_cli(*tiny_synth(recipe, prompts, out2, "--conditions", str(other))).code == 0
    assert not torch.equal(load_file(str(out2 / index.shards[0].file))["latents"], shards[0]["latents"])
    # Continuing a dataset with other conditions would mix them.
    mixed = run_cli(*tiny_synth(recipe, prompts, out2, "--conditions", str(tmp_path / "conditions.safetensors")))
    assert mixed.code == 2 and "conditions_sha256" in mixed.err

    dataset = open_dataset(out, prefetch=0)
    batch = dataset.next_batch(2, torch.Generator())
    assert set(batch.condition) == {"text", "image", "image_latent"} and set(batch.null_condition) == set(
        batch.condition
    )
    dataset.close()
    trained = run_cli("run", recipe, "--set", f"data.path={out}", "--out", str(tmp_path / "run"), "--no-progress")
    assert trained.code == 0, trained.err


def test_v2w_synth_keeps_the_conditioning_frames(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, V2W)
    prompts = embeddings(tmp_path / "prompts.safetensors", 3, 24)
    latents = torch.randn(3, 16, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, 1, 3, 4, 4)
    mask[:, :, 0] = 1.0  # the first latent frame conditions the rest
    conditions = tmp_path / "conditions.safetensors"
    save_file({"cond.condition_latents": latents, "cond.condition_mask": mask}, str(conditions))
    out = tmp_path / "data"
    result = run_cli(*tiny_synth(recipe, prompts, out, "--conditions", str(conditions)))
    assert result.code == 0, result.err
    index = ShardIndex.read(out)
    stored = torch.cat([load_file(str(out / e.file))["latents"] for e in index.shards])
    # cosmos_edm replaces the prediction on conditioning frames by the clean latents: the teacher got them.
    assert torch.equal(stored[:, :, 0], latents[:, :, 0].to(torch.bfloat16))
    assert not torch.equal(stored[:, :, 1:], latents[:, :, 1:].to(torch.bfloat16))
    assert index.tensors["cond.condition_mask"].shape == (1, 3, 4, 4)
