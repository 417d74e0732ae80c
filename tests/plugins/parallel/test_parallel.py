"""Parallel strategies on the CPU (gloo): DDP, FSDP2, FSDP2 + Ulysses context parallel, hybrid sharding.

The tiny Wan rCM graph (sCM + DMD student, fake-score critic) runs in float64 with math attention under
each strategy on 2 and 4 processes started by torchrun; losses, gradients, the EMA and the sCM network's
JVP must equal the single-process run to 1e-10 (they agree to ~1e-15: only summation order differs). A
run saved by 2 ranks is resumed by 4 and must continue with the same losses.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _parallel_recipe import RECIPE
from safetensors.torch import load_file

from rcm_registry.atomic import is_temporary
from rcm_registry.engine.checkpoint import latest_checkpoint
from rcm_registry.errors import RecipeError, UserError
from rcm_registry.plugin_loading import registry
from rcm_registry.recipe.validate import validate_recipe

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_parallel_worker.py"
TOL = 1e-10

pytestmark = pytest.mark.slow


def launch(nproc: int | None, scenarios: str, out: Path) -> None:
    """Run the worker under torchrun with ``nproc`` processes (None: one plain process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if nproc is None:
        cmd = [sys.executable, str(WORKER), scenarios, str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += [str(WORKER), scenarios, str(out)]
    result = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every scenario, launched once: single-process reference, 2 ranks (and a saved run), 4 ranks."""
    out = tmp_path_factory.mktemp("parallel")
    launch(None, "single,single_accumulated,single_resume_recipe", out)
    launch(2, "ddp,fsdp2,fsdp2_cp,save", out)
    launch(4, "hsdp_cp,fsdp2_cp4,resume", out)
    results: dict[str, Any] = {"out": out}
    for name in ("single_single_accumulated_single_resume_recipe", "ddp_fsdp2_fsdp2_cp", "hsdp_cp_fsdp2_cp4"):
        results.update(torch.load(out / f"results_{name}.pt", weights_only=True))
    return results


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


SCENARIOS = [
    "single_accumulated",  # one process: 2 micro-batches, matmul-only activation checkpointing
    "ddp",  # 2 ranks, 2 micro-batches each, block activation checkpointing
    "fsdp2",  # 2 ranks sharding, matmul-only activation checkpointing
    "fsdp2_cp",  # 2 ranks: shards over the context-parallel pair, sequence split in 2, block checkpointing
    "hsdp_cp",  # 4 ranks: 2 replicas × context parallel 2, 2 micro-batches
    "fsdp2_cp4",  # 4 ranks: sequence split in 4 (one head per rank)
]


@pytest.mark.parametrize("name", SCENARIOS)
def test_losses_gradients_and_ema_equal_single_process(runs: dict[str, Any], name: str) -> None:
    ref, got = runs["single"], runs[name]
    assert len(got["losses"]) == len(ref["losses"]) == 4
    for it, (a, b) in enumerate(zip(got["losses"], ref["losses"], strict=True)):
        assert a.keys() == b.keys(), f"iteration {it}: {sorted(a)} vs {sorted(b)}"
        for key in b:
            assert abs(a[key] - b[key]) <= TOL * abs(b[key]), f"iteration {it} {key}: {a[key]!r} vs {b[key]!r}"
    # iteration 0 is a student step (sCM + DMD), iteration 1 a critic step (fake score)
    for it in (0, 1):
        assert got["grads"][it].keys() == ref["grads"][it].keys() and ref["grads"][it]
        for key, value in ref["grads"][it].items():
            assert float(value.norm()) > 0, key
            assert rel(got["grads"][it][key], value) <= TOL, f"gradient of {key} at iteration {it}"
    for key, value in ref["ema"].items():
        assert rel(got["ema"][key], value) <= TOL, f"EMA {key}"


@pytest.mark.parametrize("name", ["fsdp2_cp", "hsdp_cp", "fsdp2_cp4"])
def test_context_parallel_network_jvp_equals_the_unsharded_network(runs: dict[str, Any], name: str) -> None:
    """The sCM tangent pass: forward-mode AD through Ulysses all-to-alls and the sequence split/gather."""
    j = runs[name]["jvp"]
    assert float(j["tangent_ref"].norm()) > 0
    assert rel(j["out"], j["out_ref"]) <= TOL
    assert rel(j["tangent"], j["tangent_ref"]) <= TOL


def _losses(path: Path) -> dict[int, float]:
    return {row["iteration"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def test_run_saved_on_two_ranks_resumes_on_four_with_the_same_losses(runs: dict[str, Any]) -> None:
    """The critic starts at iteration 2, so the checkpoint there holds an optimiser that never stepped."""
    out: Path = runs["out"]
    two, four = out / "run_2ranks", out / "run_resumed_4ranks"
    a, b = _losses(two / "metrics.jsonl"), _losses(four / "metrics.jsonl")
    single = dict(enumerate(runs["single_resume_recipe"]["losses"], start=1))  # one process, no checkpoints
    assert sorted(a) == sorted(b) == sorted(single) == [1, 2, 3, 4, 5, 6]
    for it in range(1, 7):
        assert abs(a[it] - single[it]) <= TOL * abs(single[it]), f"iteration {it}: {a[it]!r} vs {single[it]!r}"
    for it in range(3, 7):  # computed on 4 ranks after resuming from iteration 2
        assert abs(b[it] - a[it]) <= TOL * abs(a[it]), f"iteration {it}: {b[it]!r} vs {a[it]!r}"
    ca, cb = latest_checkpoint(two), latest_checkpoint(four)
    assert ca is not None and cb is not None and ca.name == cb.name == "iter_00000006"
    for name in ("model.safetensors", "ema.safetensors"):
        ta, tb = load_file(str(ca / name)), load_file(str(cb / name))
        assert ta.keys() == tb.keys() and ta
        for key in ta:
            assert rel(tb[key], ta[key]) <= TOL, f"{name} {key}"


def test_sharded_checkpoint_layout_and_consolidated_export(runs: dict[str, Any]) -> None:
    from rcm_registry.engine.sampling import open_checkpoint

    run_dir: Path = runs["out"] / "run_2ranks"
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "optim.pt").exists()
    assert not [p for p in (run_dir / "checkpoints").iterdir() if is_temporary(p)]
    model = load_file(str(ckpt / "model.safetensors"))
    assert {k.split(".")[0] for k in model} == {"student", "fake_score"}
    assert model["student.blocks.0.self_attn.q.weight"].shape == (64, 64)  # whole, not a shard
    loaded = open_checkpoint(run_dir, device="cpu")  # what `rcm sample` / `rcm export` use
    assert loaded.used_ema and loaded.role == "student"


# -- validation and errors (no processes) -------------------------------------------------------------------


def _recipe(parallel: dict[str, Any], **network: Any) -> dict[str, Any]:
    data = copy.deepcopy(RECIPE)
    data["parallel"] = parallel
    data["networks"]["teacher"].update(network)
    return data


def test_context_parallel_must_divide_the_heads() -> None:
    with pytest.raises(RecipeError) as err:
        validate_recipe(_recipe({"use": "fsdp2", "context_parallel": 3}), registry())
    text = str(err.value)
    assert "parallel (fsdp2): context_parallel 3 does not divide the 4 attention heads of networks.teacher" in text
    assert "networks.student" in text and "networks.fake_score" in text
    validate_recipe(_recipe({"use": "fsdp2", "context_parallel": 2}), registry())


def test_context_parallel_needs_a_network_that_supports_it() -> None:
    data = _recipe({"use": "fsdp2", "context_parallel": 2})
    data["networks"]["teacher"] = {"use": "mlp"}
    with pytest.raises(RecipeError, match=r"networks.teacher \(mlp\) does not support context parallel"):
        validate_recipe(data, registry())


def test_sequence_length_not_divisible_is_reported_at_the_first_batch() -> None:
    from rcm_plugins.parallel.ulysses import ContextParallelError, UlyssesSequenceParallel

    from rcm_registry.plugin_loading import registry as reg

    net = reg().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
    sp = UlyssesSequenceParallel.__new__(UlyssesSequenceParallel)  # no process group needed to split
    sp.size, sp.rank, sp.group = 4, 0, None
    net.sequence_parallel = sp
    x = torch.randn(1, 16, 1, 6, 4)  # 1·3·2 = 6 tokens
    with pytest.raises(ContextParallelError, match="context parallel size 4 does not divide the sequence length 6"):
        net(x, torch.tensor([500.0]), torch.randn(1, 4, 32))


def test_torchrun_without_a_parallel_section_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rcm_registry.engine.trainer import prepare_run_dir

    data = _recipe({"use": "ddp"})
    del data["parallel"]
    recipe = validate_recipe(data, registry())
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="no `parallel` section"):
        prepare_run_dir(tmp_path / "run", recipe, resume=False)
    assert not (tmp_path / "run").exists()


def test_cli_run_under_torchrun(tmp_path: Path) -> None:
    """``torchrun -m rcm_registry.cli run`` with bf16 mixed precision and context parallel (float32 weights):
    rank 0 alone writes metrics; the checkpoint is complete."""
    import yaml

    data = _recipe({"use": "fsdp2", "context_parallel": 2})
    data["run"].update(iterations=2, log_every=1, precision="bf16")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "rcm_registry.cli", "run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-6000:]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["phase"] for r in rows] == ["student", "critic"]
    assert all(math.isfinite(json.loads(r)["loss"]) for r in rows)
    assert latest_checkpoint(tmp_path / "run") is not None
