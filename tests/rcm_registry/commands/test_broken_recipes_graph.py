"""Broken recipes and command lines whose problem only shows when the parts are put together (network
against data and codecs, files the recipe names, device, memory, batch split) and the error paths of
``rcm run``, ``sample``, ``export``, ``synth`` and ``generate``.

Every case: exit 2, the YAML path or file or option named in stderr, no traceback, nothing written.
"""

# ruff: noqa: E501  (the case table reads best one case a line)

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error, tree

ROOT = Path(__file__).resolve().parents[3]
QUICK = str(ROOT / "recipes/quickstart/teacher.yaml")
WAN = str(ROOT / "recipes/wan2.1/t2v_tiny_rcm.yaml")
COSMOS = str(ROOT / "recipes/cosmos-predict2/t2i_tiny_rcm.yaml")
A14B = str(ROOT / "recipes/wan2.2/t2v_a14b_tiny_rcm.yaml")
TI2V = str(ROOT / "recipes/wan2.2/ti2v_tiny_rcm.yaml")
MOVING = str(ROOT / "recipes/moving_digits/teacher_tiny.yaml")
DIGITS = str(ROOT / "recipes/digits/teacher.yaml")
#: The quickstart teacher at a size that trains in a blink.
SMALL = ["--set", "networks.teacher.width=8", "--set", "run.iterations=2", "--set", "run.batch_size=8"]


def run_case(recipe: str, *sets: str) -> list[str]:
    return ["run", recipe, "--out", "run", "--no-progress", *[a for s in sets for a in ("--set", s)]]


#: (id, command line with {FIXTURE} placeholders, what stderr must name)
CASES: list[tuple[str, list[str], str]] = [
    # -- quickstart mlp against its 2-D Gaussian data ------------------------------------------------------
    ("mlp-classes", run_case(QUICK, "data.classes=4"), "networks.teacher (mlp): its condition 'label' embedding has 5"),
    ("mlp-dim", run_case(QUICK, "networks.teacher.dim=3"), "networks.teacher (mlp): takes dim = 3"),
    ("mlp-unlabelled", run_case(QUICK, "networks.teacher.num_classes=0"), "gives condition 'label', which the"),
    ("mlp-memory", run_case(QUICK, "networks.teacher.width=300000"), "GiB of parameter memory"),
    ("mlp-batch-memory", run_case(QUICK, "networks.teacher.width=300000", "run.batch_size=4"), "networks.teacher"),
    ("device-cuda", run_case(QUICK, "run.device=cuda"), "run.device: 'cuda' asked for"),
    ("device-cuda-index", run_case(QUICK, "run.device=cuda:1"), "run.device: 'cuda:1' asked for"),
    ("device-unknown", run_case(QUICK, "run.device=tpu9"), "run.device: unknown device 'tpu9'"),
    ("weights-missing", run_case(QUICK, "networks.teacher.weights={TMP}/none.safetensors"), "networks.teacher.weights.path"),
    ("weights-text-file", run_case(QUICK, "networks.teacher.weights={TMP}/notes.txt"), "not a weights format"),
    ("weights-pt-file", run_case(QUICK, "networks.teacher.weights={TMP}/model.pt"), "model.pt"),
    ("weights-plain-dir", run_case(QUICK, "networks.teacher.weights={TMP}/folder"), "not a run directory"),
    ("weights-empty-run", run_case(QUICK, "networks.teacher.weights={TMP}/empty_run"), "no complete checkpoint"),
    ("weights-role-unknown", run_case(QUICK, "networks.teacher.weights={path: {RUN}, role: studnt}"), "weights.role: 'studnt'"),
    ("weights-role-on-file", run_case(QUICK, "networks.teacher.weights={path: {TMP}/w.safetensors, role: teacher}"), "weights.role: applies to a run"),
    ("weights-run-no-recipe", run_case(QUICK, "networks.teacher.weights={TMP}/bare_run"), "bare_run/checkpoints/iter_00000001/recipe.yaml: missing"),
    ("weights-format-run", run_case(QUICK, "networks.teacher.weights={path: {TMP}/folder, format: run}"), "is not a run directory"),
    ("batch-accumulation", run_case(QUICK, "parallel={use: single, gradient_accumulation: 3}"), "run.batch_size 512 is not divisible"),
    ("batch-ddp-accumulation", run_case(QUICK, "parallel={use: ddp, gradient_accumulation: 5}"), "run.batch_size 512"),
    # -- Wan2.1 tiny against random latents -------------------------------------------------------------------
    ("wan-channels", run_case(WAN, "data.shape=[4,3,4,6]"), "networks.teacher (wan2.1-t2v): takes in_channels = 16"),
    ("wan-text-width", run_case(WAN, "data.text_dim=48"), "takes text_dim = 32 in condition 'text'"),
    ("wan-height", run_case(WAN, "data.shape=[16,3,5,6]"), "H = 5 (shape [16, 3, 5, 6]), not a multiple of 2"),
    ("wan-width", run_case(WAN, "data.shape=[16,3,4,7]"), "W = 7"),
    ("wan-frames-patch", run_case(WAN, "networks.teacher.patch_size=[2,2,2]"), "T = 3"),
    ("wan-heads", run_case(WAN, "networks.teacher.num_heads=3"), "networks.teacher (wan2.1-t2v): dim 64 is not divisible"),
    ("wan-head-dim-rope", run_case(WAN, "networks.teacher.num_heads=32"), "head dim 2 must be even"),
    ("wan-triton-head-dim", run_case(WAN, "networks.teacher.num_heads=8", "networks.student.attention.use=triton_jvp"), "networks.student.attention (triton_jvp): head dim 8"),
    ("wan-in-channels", run_case(WAN, "networks.teacher.in_channels=8", "networks.teacher.out_channels=8"), "takes in_channels = 8"),
    ("wan-text-dim", run_case(WAN, "networks.teacher.text_dim=16"), "takes text_dim = 16"),
    ("wan-v2w-conditions", run_case(WAN, "data.condition_frames=1"), "gives condition 'condition_latents', which the"),
    ("wan-weights", run_case(WAN, "networks.teacher.weights={path: {TMP}/nope}"), "nope: no such file or directory"),
    ("wan-weights-file", run_case(WAN, "networks.teacher.weights={path: {TMP}/notes.txt}"), "notes.txt: not a weights file"),
    ("wan-device", run_case(WAN, "run.device=cuda"), "run.device"),
    ("wan-i2v", run_case(WAN, "networks.teacher.use=wan2.1-i2v"), "the network needs condition 'image'"),
    ("wan-batch-split", run_case(WAN, "parallel={use: single, gradient_accumulation: 4}"), "run.batch_size 2"),
    ("wan-text-codec", run_case(WAN, "codecs.text={use: umt5, path: {CODECS}/text_encoder}"), "codecs.text (umt5, "),
    ("wan-vae-codec", run_case(WAN, "codecs.vae={use: wan_vae, path: {CODECS}/vae}"), "codecs.vae (wan_vae, "),
    ("wan-codec-missing", run_case(WAN, "codecs.vae={use: wan_vae, path: {TMP}/novae}"), "novae is not a directory"),
    ("wan-codec-no-config", run_case(WAN, "codecs.text={use: umt5, path: {TMP}/folder}"), "has no config.json"),
    ("wan-shards-channels", run_case(WAN, "data={use: latent_shards, path: {SHARDS}}"), "index.json"),
    ("wan-shards-missing", run_case(WAN, "data={use: latent_shards, path: {TMP}/nodata}"), "nodata: no such dataset"),
    ("wan-shards-no-index", run_case(WAN, "data={use: latent_shards, path: {TMP}/folder}"), "index.json: missing"),
    # -- Cosmos, Wan2.2 ---------------------------------------------------------------------------------------
    ("cosmos-text", run_case(COSMOS, "data.text_dim=32"), "networks.teacher (cosmos-predict2-t2i): takes text_dim = 24"),
    ("cosmos-channels", run_case(COSMOS, "data.shape=[4,1,8,8]"), "takes in_channels = 16"),
    ("cosmos-patch", run_case(COSMOS, "data.shape=[16,1,7,8]"), "H = 7"),
    ("cosmos-triton", run_case(COSMOS, "networks.teacher.head_dim=12", "networks.student.attention.use=triton_jvp"), "head dim 12 is outside"),
    ("cosmos-v2w", run_case(COSMOS, "networks.teacher.use=cosmos-predict2-v2w"), "needs condition 'condition_latents'"),
    ("a14b-channels", run_case(A14B, "data.shape=[8,3,4,6]"), "networks.teacher (wan2.2-t2v-a14b): takes in_channels = 16"),
    ("a14b-text", run_case(A14B, "data.text_dim=8"), "takes text_dim = 32"),
    ("ti2v-channels", run_case(TI2V, "data.shape=[16,3,4,6]"), "networks.teacher (wan2.2-ti2v-5b): takes in_channels = 48"),
    ("ti2v-first-frame", run_case(TI2V, "networks.teacher.first_frame=true"), "needs condition 'first_frame'"),
    # -- digits ---------------------------------------------------------------------------------------------
    ("moving-frames", run_case(MOVING, "networks.teacher.patch_size=[2,4,4]"), "T = 5"),
    ("moving-canvas", run_case(MOVING, "data.canvas=18", "data.digit_size=8"), "H = 18"),
    ("moving-direction", run_case(MOVING, "data.condition_direction=false"), "needs condition 'direction'"),
    ("digits-unlabelled", run_case(DIGITS, "data.labels=false"), "networks.teacher (wan2.1-labels): the network needs condition 'label'"),
    ("digits-classes", run_case(DIGITS, "networks.teacher.num_classes=12"), "embedding has 12 classes"),
    ("digits-channels", run_case(DIGITS, "networks.teacher.in_channels=3", "networks.teacher.out_channels=3"), "takes in_channels = 3"),
    # -- command lines ----------------------------------------------------------------------------------------
    ("run-out-file", ["run", QUICK, "--out", "{TMP}/notes.txt", *SMALL], "--out {TMP}/notes.txt: is a file"),
    ("run-out-existing-run", ["run", QUICK, "--out", "{RUN}", *SMALL], "already holds a run"),
    ("sample-steps-0", ["sample", "{RUN}", "--steps", "0", "--out", "s.png"], "--steps 0: must be at least 1"),
    ("sample-num-0", ["sample", "{RUN}", "--num", "0", "--out", "s.png"], "--num 0"),
    ("sample-out-dir", ["sample", "{RUN}", "--out", "{TMP}/folder"], "is a directory"),
    ("sample-out-suffix", ["sample", "{RUN}", "--out", "s.jpg"], "--out s.jpg"),
    ("sample-no-run", ["sample", "{TMP}/folder", "--out", "s.png"], "folder"),
    ("export-no-run", ["export", "{TMP}/nope", "--out", "e"], "nope"),
    ("export-no-export", ["export", "{RUN}", "--out", "e"], "has no export"),
    ("synth-out-file", ["synth", WAN, "--prompts", "{TMP}/notes.txt", "--out", "{TMP}/notes.txt", "--shape", "16,3,4,6"], "is a file, not a dataset"),
    ("synth-steps-0", ["synth", WAN, "--prompts", "{TMP}/notes.txt", "--out", "d", "--steps", "0", "--shape", "16,3,4,6"], "--steps 0"),
    ("synth-shard-size-0", ["synth", WAN, "--prompts", "{TMP}/notes.txt", "--out", "d", "--shard-size", "0"], "--shard-size 0"),
    ("synth-batch-size-0", ["synth", WAN, "--prompts", "{TMP}/notes.txt", "--out", "d", "--batch-size", "0"], "--batch-size 0"),
    ("synth-teacher-weights", ["synth", WAN, "--prompts", "{TMP}/notes.txt", "--out", "d", "--shape", "16,3,4,6", "--set", "networks.teacher.weights={TMP}/nope"], "{TMP}/nope: no such file"),
    ("generate-out-dir", ["generate", "{RUN}", "--prompt", "a fox", "--out", "{TMP}/folder"], "is a directory"),
    ("generate-steps", ["generate", "{RUN}", "--prompt", "a fox", "--steps", "9", "--out", "f.png"], "--steps 9"),
    ("generate-suffix", ["generate", "{RUN}", "--prompt", "a fox", "--out", "f.gif"], "--out f.gif"),
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the cases name: a trained quickstart run, tiny codecs whose widths disagree with the tiny Wan
    recipe, a latent-shard index of 4-channel latents, and assorted files and folders."""
    from rcm_plugins.data.tiny import write_tiny_codecs

    tmp = tmp_path_factory.mktemp("graph")
    run = tmp / "quick_run"
    done = run_cli("run", QUICK, "--out", str(run), "--no-progress", *SMALL)
    assert done.code == 0, done.err
    codecs = write_tiny_codecs(tmp / "codecs", text_dim=24, z_dim=4)
    assert set(codecs) == {"text_encoder", "tokenizer", "vae"}
    shards = tmp / "shards"
    shards.mkdir()
    index = {
        "format": "rcm-latent-shards",
        "version": 1,
        "tensors": {"latents": {"dtype": "float32", "shape": [4, 3, 4, 6]}, "text": {"dtype": "float32", "shape": [5, 32]}},
        "shards": [],
    }  # fmt: skip
    (shards / "index.json").write_text(json.dumps(index))
    (tmp / "notes.txt").write_text("a red fox\n")
    (tmp / "model.pt").write_bytes(b"not a pickle")
    (tmp / "w.safetensors").write_bytes(b"")
    (tmp / "folder").mkdir()
    (tmp / "empty_run" / "checkpoints").mkdir(parents=True)
    bare = tmp / "bare_run" / "checkpoints" / "iter_00000001"
    bare.mkdir(parents=True)
    (bare / "meta.json").write_text('{"iteration": 1}')
    return {"TMP": tmp, "RUN": run, "CODECS": tmp / "codecs", "SHARDS": shards}


@pytest.mark.parametrize(("args", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line_per_problem_and_nothing_written(
    args: list[str], named: str, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fill(text: str) -> str:
        for key, path in files.items():
            text = text.replace("{" + key + "}", str(path))
        return text

    monkeypatch.chdir(tmp_path)
    before_tmp, before_files = tree(tmp_path), tree(files["TMP"])
    result = run_cli(*[fill(a) for a in args])
    assert_user_error(result, fill(named), tmp_path, before_tmp)
    assert_user_error(result, fill(named), files["TMP"], before_files)


def test_there_are_fifty_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 50
    assert len({tuple(c[1]) for c in CASES}) == len(CASES)


def test_relative_set_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rcm generate``/``sample`` read the saved recipe from anywhere: a relative --set path must not
    depend on the directory ``rcm run`` started in."""
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    source = tmp_path / "source"
    assert run_cli("run", QUICK, "--out", str(source), "--no-progress", *SMALL).code == 0
    result = run_cli("run", QUICK, "--out", "run", "--no-progress", *SMALL, "--set", "networks.teacher.weights=source")
    assert result.code == 0, result.err
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["networks"]["teacher"]["weights"] == str(source)


def test_a_run_that_cannot_be_built_leaves_no_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while building the networks (here a weights file that is no safetensors) comes before the
    run directory exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    before = tree(tmp_path)
    result = run_cli(
        "run", QUICK, "--out", "run", "--no-progress", *SMALL, "--set", "networks.teacher.weights=w.safetensors"
    )
    assert_user_error(result, "w.safetensors", tmp_path, before)
