"""Round trip on a tiny Wan2.1 with tiny codecs: rcm synth → latent shards → rcm run → rcm generate.

Also: a resumed training run over latent shards ends bitwise where an uninterrupted one does, and a damaged
shard stops ``rcm run`` before it trains (exit 2, the file named).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rcm_plugins.data.tiny import write_tiny_codecs
from safetensors.torch import load_file, save_file

import rcm_registry as rr
from rcm_registry.engine.checkpoint import Checkpoint, latest_checkpoint
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/wan2.1/t2v_tiny_synth.yaml")
PROMPTS = ["a red fox in the snow", "a dog on the sea", "a blue car at night", "the cat", "a green sky"]
LATENT = (16, 3, 4, 4)  # the tiny VAE: ×2 in time and space → 5 frames of 8×8 pixels


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Codecs, a teacher, shards synthesised from it, and a finished rCM run trained on them."""
    root = tmp_path_factory.mktemp("roundtrip")
    paths = write_tiny_codecs(root / "codecs")
    torch.manual_seed(0)
    teacher = rr.registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    paths["teacher"] = teacher.export(root / "teacher", format="native")
    paths["prompts"] = root / "prompts.txt"
    paths["prompts"].write_text("\n".join(PROMPTS) + "\n")
    paths["data"] = root / "data"
    shape = ",".join(map(str, LATENT))
    synth = run_cli(
        "synth", RECIPE, "--prompts", str(root / "prompts.txt"), "--out", str(paths["data"]), "--shape", shape,
        "--steps", "3", "--shard-size", "2", "--no-progress", *sets(paths, data=False),
    )  # fmt: skip
    assert synth.code == 0, synth.err
    paths["run"] = root / "run"
    run = run_cli("run", RECIPE, "--out", str(paths["run"]), "--no-progress", *sets(paths))
    assert run.code == 0, run.err
    return paths


def sets(paths: dict[str, Path], *, data: bool = True) -> list[str]:
    values = {
        "networks.teacher.weights.path": paths["teacher"],
        "codecs.text.path": paths["text_encoder"],
        "codecs.vae.path": paths["vae"],
    }
    if data:
        values["data.path"] = paths["data"]
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def generate(world: dict[str, Path], out: Path, *extra: str, target: Path | None = None) -> str:
    result = run_cli(
        "generate", str(target or world["run"]), "--prompt", "a red fox in the snow", "--out", str(out), *extra
    )
    assert result.code == 0, result.err
    return result.err


def test_the_run_trained_on_the_synthesised_shards(world: dict[str, Path]) -> None:
    ckpt = Checkpoint(latest_checkpoint(world["run"]))
    assert ckpt.iteration == 6
    state = ckpt.state()["dataset"]
    assert state["samples"] == len(PROMPTS) and (state["epoch"], state["offset"]) == (2, 2)  # 6 batches of 2 from 5


def test_generate_png_decodes_the_latents_it_would_write(world: dict[str, Path], tmp_path: Path) -> None:
    err = generate(world, tmp_path / "fox.png", "--steps", "2", "--seed", "3")
    assert "2/2" in err  # the progress bar, one tick per network call
    generate(world, tmp_path / "fox.safetensors", "--steps", "2", "--seed", "3")
    latents = load_file(str(tmp_path / "fox.safetensors"))["latents"]
    assert latents.shape == LATENT
    vae = rr.registry().build("codec", "wan_vae", path=str(world["vae"]))
    video = vae.decode(latents[None])[0]
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    sheet = np.asarray(Image.open(tmp_path / "fox.png"))
    assert sheet.shape == (16, 24, 3)  # 5 frames of 8×8 in a 3-column grid
    assert np.array_equal(sheet[:8, :8], frames[0]) and np.array_equal(sheet[8:, 8:16], frames[4])


def test_generate_is_seeded_and_uses_the_ema(world: dict[str, Path], tmp_path: Path) -> None:
    def latents(name: str, *extra: str, target: Path | None = None) -> torch.Tensor:
        generate(world, tmp_path / name, "--latents-only", "--shape", "16,3,4,4", *extra, target=target)
        return load_file(str(tmp_path / name))["latents"]

    a, b = latents("a.safetensors"), latents("b.safetensors")
    assert torch.equal(a, b)
    assert not torch.equal(a, latents("c.safetensors", "--seed", "1"))
    assert not torch.equal(a, latents("d.safetensors", "--no-ema"))
    assert not torch.equal(a, latents("e.safetensors", "--steps", "1"))
    ckpt = latest_checkpoint(world["run"])
    assert torch.equal(a, latents("f.safetensors", target=ckpt))  # a checkpoint folder works too
    video_size = ("--frames", "5", "--height", "8", "--width", "8")  # through the VAE's factors: the same latent
    generate(world, tmp_path / "g.safetensors", "--latents-only", *video_size)
    assert torch.equal(a, load_file(str(tmp_path / "g.safetensors"))["latents"])
    generate(world, tmp_path / "h.safetensors")  # the training data's latent shape
    assert torch.equal(a, load_file(str(tmp_path / "h.safetensors"))["latents"])


def test_generate_writes_an_mp4(world: dict[str, Path], tmp_path: Path) -> None:
    import imageio.v3 as iio

    out = tmp_path / "fox.mp4"
    generate(world, out)
    frames = iio.imread(out, plugin="FFMPEG")
    assert frames.shape[0] == 5 and frames.shape[-1] == 3  # the tiny VAE's 5 frames (ffmpeg pads 8×8 to 16×16)
    png = tmp_path / "fox.png"
    generate(world, png)  # the same clip as a contact sheet: frame 0 is the MP4's, up to the codec's loss
    sheet = np.asarray(Image.open(png)).astype(np.float64)
    first = np.asarray(Image.fromarray(frames[0]).resize((8, 8), Image.BILINEAR)).astype(np.float64)
    assert np.abs(sheet[:8, :8] - first).mean() < 40


@pytest.mark.parametrize("missing", ["imageio", "imageio_ffmpeg"])
def test_generate_mp4_without_imageio_names_the_extra(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    out = tmp_path / "fox.mp4"
    result = run_cli("generate", str(world["run"]), "--prompt", "a cat", "--out", str(out), "--no-progress")
    assert result.code == 2, result
    assert '".[wan]"' in result.err and missing in result.err and "Traceback" not in result.err
    assert list(tmp_path.iterdir()) == []


def test_generate_user_errors(world: dict[str, Path], tmp_path: Path) -> None:
    def err(*args: str) -> str:
        result = run_cli("generate", str(world["run"]), "--prompt", "a cat", *args)
        assert result.code == 2, result
        return result.err

    assert "1 to 4 steps" in err("--out", str(tmp_path / "x.png"), "--steps", "5")
    assert "must end in" in err("--out", str(tmp_path / "x.gif"))
    assert "writes a .safetensors file" in err("--out", str(tmp_path / "x.png"), "--latents-only")
    missing = tmp_path / "no-vae"
    assert f"{missing} is not a directory" in err(
        "--out", str(tmp_path / "x.png"), "--set", f"codecs.vae.path={missing}"
    )


def test_resumed_training_on_shards_matches_an_uninterrupted_run(world: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_cli("run", RECIPE, "--out", str(run), "--no-progress", *sets(world), "--set", "run.iterations=3")
    assert first.code == 0, first.err
    second = run_cli("run", RECIPE, "--out", str(run), "--no-progress", "--resume", *sets(world))
    assert second.code == 0, second.err
    resumed, whole = Checkpoint(latest_checkpoint(run)), Checkpoint(latest_checkpoint(world["run"]))
    assert resumed.state()["dataset"] == whole.state()["dataset"]
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(resumed.path / name)), load_file(str(whole.path / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_damaged_shard_stops_the_run_before_training(world: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    shard = data / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-5])
    run = tmp_path / "run"
    args = [a.replace(str(world["data"]), str(data)) for a in sets(world)]
    result = run_cli("run", RECIPE, "--out", str(run), "--no-progress", *args)
    assert result.code == 2
    assert "shard-000001.safetensors: truncated" in result.err
    assert latest_checkpoint(run) is None and not (run / "metrics.jsonl").exists()


def test_generation_conditions_are_checked_against_the_network() -> None:
    from types import SimpleNamespace

    from rcm_plugins.wan.config import WanI2VConfig, WanT2VConfig

    from rcm_registry.errors import UserError
    from rcm_registry.generate import check_generation_conditions

    t2v = SimpleNamespace(name="wan2.1-t2v", config=WanT2VConfig(size="tiny"))
    i2v = SimpleNamespace(name="wan2.1-i2v", config=WanI2VConfig(size="tiny"))
    image = {"image": torch.zeros(1, 3, 24), "image_latent": torch.zeros(1, 20, 3, 4, 4)}
    check_generation_conditions("student", t2v, LATENT, {})
    check_generation_conditions("student", i2v, LATENT, image)
    with pytest.raises(UserError, match=r"rcm generate needs cond.image \(\*, 24\), cond.image_latent") as missing:
        check_generation_conditions("student", i2v, LATENT, {})
    assert "--conditions FILE.safetensors" in str(missing.value)
    with pytest.raises(UserError, match="takes no condition 'image'"):
        check_generation_conditions("student", t2v, LATENT, {"image": image["image"]})
    with pytest.raises(UserError, match=r"cond.image_latent: \[16, 3, 4, 4\] per prompt"):
        check_generation_conditions("student", i2v, LATENT, {**image, "image_latent": torch.zeros(1, 16, 3, 4, 4)})


@pytest.fixture(scope="module")
def i2v_world(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Wan2.1 I2V rCM run on shards synthesised with image conditions, and a one-row conditions file."""
    root = tmp_path_factory.mktemp("i2v")
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"base: {RECIPE}\n"
        "networks:\n  teacher: {use: wan2.1-i2v, size: tiny, weights: null, attention: {use: math}}\n"
    )
    g = torch.Generator().manual_seed(5)
    rows = {"cond.image": torch.randn(len(PROMPTS), 3, 24, generator=g),
            "cond.image_latent": torch.randn(len(PROMPTS), 20, *LATENT[1:], generator=g)}  # fmt: skip
    save_file(rows, str(root / "conditions.safetensors"))
    save_file({k: v[:1].clone() for k, v in rows.items()}, str(root / "one.safetensors"))
    codecs = ["--set", f"codecs.text.path={world['text_encoder']}", "--set", f"codecs.vae.path={world['vae']}"]
    synth = run_cli(
        "synth", str(recipe), "--prompts", str(world["prompts"]), "--out", str(root / "data"),
        "--shape", ",".join(map(str, LATENT)), "--steps", "2", "--no-progress",
        "--conditions", str(root / "conditions.safetensors"), *codecs,
    )  # fmt: skip
    assert synth.code == 0, synth.err
    run = run_cli(
        "run", str(recipe), "--out", str(root / "run"), "--no-progress", "--set", f"data.path={root / 'data'}",
        "--set", "run.iterations=2", *codecs,
    )  # fmt: skip
    assert run.code == 0, run.err
    return {"run": root / "run", "one": root / "one.safetensors", "all": root / "conditions.safetensors"}


def test_generate_takes_the_conditions_besides_the_text(i2v_world: dict[str, Path], tmp_path: Path) -> None:
    def call(out: str, *extra: str) -> tuple[int, str]:
        result = run_cli(
            "generate", str(i2v_world["run"]), "--prompt", "a red fox", "--out", str(tmp_path / out),
            "--latents-only", "--steps", "2", "--no-progress", *extra,
        )  # fmt: skip
        return result.code, result.err

    code, err = call("none.safetensors")
    assert code == 2 and "cond.image" in err and "--conditions FILE.safetensors" in err
    code, err = call("rows.safetensors", "--conditions", str(i2v_world["all"]))
    assert code == 2 and "expected one row per prompt (1, ...)" in err
    assert call("a.safetensors", "--conditions", str(i2v_world["one"]))[0] == 0
    assert call("b.safetensors", "--conditions", str(i2v_world["one"]))[0] == 0
    a, b = (load_file(str(tmp_path / n))["latents"] for n in ("a.safetensors", "b.safetensors"))
    assert a.shape == LATENT and torch.isfinite(a).all() and torch.equal(a, b)
    # The conditions reach the network: other image conditions, another sample from the same noise.
    other = {k: v + 1.0 for k, v in load_file(str(i2v_world["one"])).items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    assert call("c.safetensors", "--conditions", str(tmp_path / "other.safetensors"))[0] == 0
    assert not torch.equal(a, load_file(str(tmp_path / "c.safetensors"))["latents"])


def test_generate_profile_times_every_stage_and_changes_nothing(world: dict[str, Path], tmp_path: Path) -> None:
    import json

    generate(world, tmp_path / "plain.safetensors", "--steps", "3", "--no-progress")
    report = tmp_path / "profile.json"
    result = run_cli(
        "generate", str(world["run"]), "--prompt", "a red fox in the snow", "--out", str(tmp_path / "p.safetensors"),
        "--steps", "3", "--no-progress", "--profile-json", str(report),
    )  # fmt: skip
    assert result.code == 0, result.err
    plain = load_file(str(tmp_path / "plain.safetensors"))["latents"]
    assert torch.equal(plain, load_file(str(tmp_path / "p.safetensors"))["latents"])
    profile = json.loads(report.read_text())
    names = [s["name"] for s in profile["stages"]]
    calls = [f"transformer call {i} (step {i})" for i in (1, 2, 3)]  # the student: one call per step
    assert names == ["text encoding (prompt)", "text encoding (negative prompt)", *calls, "write safetensors"]
    assert all(s["seconds"] > 0 and s["peak_bytes"] is None for s in profile["stages"])  # CPU: no peak memory
    assert profile["totals"]["transformer"]["name"] == "transformer (3 calls)" and profile["network_calls"] == 3
    assert "| transformer (3 calls) |" in result.out and "n/a" in result.out

    png = run_cli(
        "generate", str(world["run"]), "--prompt", "a red fox", "--out", str(tmp_path / "p.png"), "--profile",
        "--no-progress",
    )  # fmt: skip
    assert png.code == 0, png.err
    assert "| vae decode |" in png.out and "| write png |" in png.out


def test_generate_speed_options_give_the_same_latents(world: dict[str, Path], tmp_path: Path) -> None:
    def latents(name: str, *extra: str) -> torch.Tensor:
        generate(world, tmp_path / name, "--steps", "2", "--no-progress", *extra)
        return load_file(str(tmp_path / name))["latents"]

    plain = latents("plain.safetensors")
    assert torch.equal(plain, latents("offload.safetensors", "--offload-text-encoder"))
    # The compile plumbing through dynamo and AOT autograd, without the inductor's C++ build (slow on a CPU).
    compiled = latents("compiled.safetensors", "--compile", "--compile-backend", "aot_eager")
    torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_generate_refuses_cuda_graphs_without_cuda(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    result = run_cli("generate", str(world["run"]), "--prompt", "a fox", "--out", str(out), "--cuda-graphs")
    assert result.code == 2 and "CUDA graphs need a CUDA device" in result.err and "Traceback" not in result.err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_with_cuda_graphs_gives_the_same_latents(world: dict[str, Path], tmp_path: Path) -> None:
    def latents(name: str, *extra: str) -> torch.Tensor:
        generate(world, tmp_path / name, "--steps", "4", "--no-progress", "--device", "cuda", *extra)
        return load_file(str(tmp_path / name))["latents"]

    assert torch.equal(latents("graphs.safetensors", "--cuda-graphs"), latents("eager.safetensors"))


def test_generate_rejects_a_bad_compile_backend(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    result = run_cli(
        "generate", str(world["run"]), "--prompt", "a fox", "--out", str(out), "--compile", "--compile-backend", "nope"
    )  # fmt: skip
    assert result.code == 2 and "--compile" in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_the_negative_prompt_is_encoded_once_per_codec_and_prompt() -> None:
    from rcm_registry.generate import encode_negative

    class Codec:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            self.seen += prompts
            return torch.full((1, 2, 3), float(len(prompts[0]))), torch.ones(1, 2, dtype=torch.bool)

    a, b = Codec(), Codec()
    first, cached = encode_negative(a, "blurry")
    assert not cached and a.seen == ["blurry"]
    again, cached = encode_negative(a, "blurry")
    assert cached and again is first and a.seen == ["blurry"]
    assert not encode_negative(a, "dark")[1] and not encode_negative(b, "blurry")[1]  # keyed by codec and prompt
    assert not encode_negative(a, "blurry", cache=False)[1] and a.seen == ["blurry", "dark", "blurry"]


def test_generate_from_the_recipe_with_a_release_checkpoint(world: dict[str, Path], tmp_path: Path) -> None:
    # The user story of "Sample the release's checkpoint": a recipe file (teacher weights and data left ???)
    # and a net.-prefixed .pt give what the run itself gives when the .pt holds the run's EMA student.
    student = tmp_path / "student.pt"
    exported = run_cli("export", str(world["run"]), "--format", "rcm-release", "--dtype", "fp32", "--out", str(student))
    assert exported.code == 0, exported.err
    codecs = ["--set", f"codecs.text.path={world['text_encoder']}", "--set", f"codecs.vae.path={world['vae']}"]
    shape = ("--latents-only", "--shape", "16,3,4,4", "--steps", "2")
    generate(world, tmp_path / "run.safetensors", *shape)
    result = run_cli(
        "generate", RECIPE, "--prompt", "a red fox in the snow", "--out", str(tmp_path / "pt.safetensors"), *shape,
        "--weights", str(student), *codecs,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert f"(weights from {student}, " in result.out
    ours = load_file(str(tmp_path / "run.safetensors"))["latents"]
    assert torch.equal(ours, load_file(str(tmp_path / "pt.safetensors"))["latents"])
    generate(world, tmp_path / "run_pt.safetensors", *shape, "--weights", str(student))  # a run's recipe, other weights
    assert torch.equal(ours, load_file(str(tmp_path / "run_pt.safetensors"))["latents"])
    # Without --shape the latent size would come from the training data, which the recipe file does not name.
    result = run_cli(
        "generate", RECIPE, "--prompt", "a cat", "--latents-only", "--weights", str(student), *codecs,
        "--out", str(tmp_path / "x.safetensors"),
    )  # fmt: skip
    assert result.code == 2 and "data.path is not given" in result.err and not (tmp_path / "x.safetensors").exists()


def test_generate_decodes_with_the_tiny_video_decoder(world: dict[str, Path], tmp_path: Path) -> None:
    # `--set codecs.vae.use=taehv`: the same latents, decoded by the tiny decoder (×4 frames, ×8 pixels).
    from rcm_plugins.data._tiny_video_decoder import TinyVideoDecoder

    torch.manual_seed(0)
    weights = tmp_path / "taew2_1.safetensors"
    save_file({f"decoder.{k}": v for k, v in TinyVideoDecoder().decoder.state_dict().items()}, str(weights))
    tiny = ("--set", "codecs.vae.use=taehv", "--set", f"codecs.vae.path={weights}")
    generate(world, tmp_path / "vae.safetensors", "--steps", "2", "--seed", "3")
    generate(world, tmp_path / "tiny.safetensors", "--steps", "2", "--seed", "3", *tiny)
    latents = load_file(str(tmp_path / "tiny.safetensors"))["latents"]
    assert torch.equal(latents, load_file(str(tmp_path / "vae.safetensors"))["latents"])
    generate(world, tmp_path / "tiny.png", "--steps", "2", "--seed", "3", *tiny)
    video = rr.registry().build("codec", "taehv", path=str(weights)).decode(latents[None])[0]
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    sheet = np.asarray(Image.open(tmp_path / "tiny.png"))
    assert frames.shape == (9, 32, 32, 3) and sheet.shape == (96, 96, 3)  # 1 + 4·2 frames in a 3-column grid
    assert np.array_equal(sheet[:32, :32], frames[0]) and np.array_equal(sheet[64:, 64:], frames[8])
