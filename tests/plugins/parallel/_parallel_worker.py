"""One process of the multi-process tests: started by torchrun (or alone for the single-process reference).

    python -m torch.distributed.run --nproc_per_node N _parallel_worker.py SCENARIO OUT

Every scenario trains the tiny Wan rCM graph (sCM + DMD student, fake-score critic, float64, math
attention) and rank 0 writes what the test compares: float64 losses per iteration, the full gradients
after the first student and critic steps, and the EMA at the end.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

# Everything in float64 (networks, latents, text): the comparisons are at 1e-10.
torch.set_default_dtype(torch.float64)

from _parallel_recipe import RECIPE, SHAPE  # noqa: E402

from rcm_registry import distributed  # noqa: E402
from rcm_registry.engine.checkpoint import full_tensors  # noqa: E402
from rcm_registry.engine.graph import build_network  # noqa: E402
from rcm_registry.engine.trainer import Trainer, prepare_run_dir  # noqa: E402
from rcm_registry.jvp import jvp  # noqa: E402
from rcm_registry.plugin_loading import registry  # noqa: E402
from rcm_registry.recipe.validate import validate_recipe  # noqa: E402

PARALLEL: dict[str, dict[str, Any] | None] = {
    "single": None,
    "single_accumulated": {"use": "single", "gradient_accumulation": 2, "activation_checkpointing": "matmul"},
    "ddp": {"use": "ddp", "gradient_accumulation": 2, "activation_checkpointing": "block"},
    "fsdp2": {"use": "fsdp2", "activation_checkpointing": "matmul"},
    "fsdp2_cp": {"use": "fsdp2", "context_parallel": 2, "activation_checkpointing": "block"},
    "hsdp_cp": {"use": "fsdp2", "replicate": 2, "context_parallel": 2, "gradient_accumulation": 2},
    "fsdp2_cp4": {"use": "fsdp2", "context_parallel": 4},
}

#: The save/resume scenarios: 6 iterations, checkpoints every 2; the critic starts at 2, so the checkpoint
#: at 2 holds an optimiser that has not stepped yet.
RESUME_RUN = {"iterations": 6, "checkpoint_every": 2, "keep_checkpoints": 5, "critic_start": 2}


def recipe_for(parallel: dict[str, Any] | None, *, critic_start: int = 0, **run: Any) -> Any:
    data = copy.deepcopy(RECIPE)
    if parallel is not None:
        data["parallel"] = parallel
    data["phases"]["critic"]["start"] = critic_start
    data["run"].update(run)
    return validate_recipe(data, registry(), "parallel-test")


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().clone()


def train(name: str) -> dict[str, Any]:
    """Four iterations (student, critic, student, critic) of the tiny graph under ``name``'s strategy."""
    if name == "single_resume_recipe":  # the save/resume recipe in one process, without checkpoints
        trainer = Trainer(recipe_for(None, **RESUME_RUN), Path("unused"), progress=False)
        return {"losses": [trainer.step()["loss"] for _ in range(6)]}
    recipe = recipe_for(PARALLEL[name])
    trainer = Trainer(recipe, Path("unused"), progress=False)
    graph = trainer.graph
    losses: list[dict[str, float]] = []
    grads: dict[int, dict[str, torch.Tensor]] = {}
    for it in range(4):
        role = graph.select_phase(it).trains
        values = trainer.step()
        losses.append({k: v for k, v in values.items() if k.startswith("loss/")})
        if it < 2:
            grads[it] = {n: _full(p.grad) for n, p in graph.module(role).named_parameters() if p.grad is not None}
    ema = {k: _full(v) for k, v in graph.phases["student"].ema.shadow.items()}
    out: dict[str, Any] = {"losses": losses, "grads": grads, "ema": ema}
    if "cp" in name:
        out["jvp"] = cp_jvp_check(trainer)
    return out


def cp_jvp_check(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Output and tangent of the context-parallel student vs an unsharded copy, on the same inputs."""
    graph = trainer.graph
    net = graph.nets["student"]
    state = full_tensors(graph.module("student").state_dict(), keep=True)
    ref = build_network(trainer.recipe.networks["student"])
    ref.load_state_dict(state)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, *SHAPE, generator=g)
    timestep = torch.rand(2, generator=g) * 1000
    text = torch.randn(2, 4, 32, generator=g)
    tx, tt = torch.randn_like(x), torch.randn_like(timestep)

    def call(module: torch.nn.Module) -> Any:
        return jvp(lambda a, b: module(a, b, text), (x, timestep), (tx, tt))

    out, tangent = call(net)
    out_ref, tangent_ref = call(ref)
    return {"out": out, "tangent": tangent, "out_ref": out_ref, "tangent_ref": tangent_ref}


def save_run(run_dir: Path) -> None:
    recipe = recipe_for(PARALLEL["fsdp2"] | {"activation_checkpointing": "none"}, **RESUME_RUN)
    prepare_run_dir(run_dir, recipe, resume=False)
    Trainer(recipe, run_dir, progress=False).run()


def resume_run(source: Path, run_dir: Path, from_iteration: int) -> None:
    """Resume a copy of ``source`` from its checkpoint at ``from_iteration`` (later ones removed)."""
    if distributed.is_main():
        shutil.copytree(source, run_dir)
        for ckpt in (run_dir / "checkpoints").glob("iter_*"):
            if int(ckpt.name.split("_")[1]) > from_iteration:
                shutil.rmtree(ckpt)
    recipe = recipe_for(PARALLEL["fsdp2"] | {"activation_checkpointing": "none"}, **RESUME_RUN)
    ckpt = prepare_run_dir(run_dir, recipe, resume=True)
    trainer = Trainer(recipe, run_dir, progress=False)
    assert ckpt is not None
    trainer.restore(ckpt)
    trainer.run()


def main(argv: list[str]) -> None:
    out = Path(argv[2])
    scenarios = argv[1].split(",")
    results: dict[str, Any] = {}
    for scenario in scenarios:
        if scenario == "save":
            save_run(out / "run_2ranks")
        elif scenario == "resume":
            resume_run(out / "run_2ranks", out / f"run_resumed_{distributed.world_size()}ranks", 2)
        elif scenario in PARALLEL or scenario == "single_resume_recipe":
            results[scenario] = train(scenario)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    if distributed.is_main() and results:
        torch.save(results, out / f"results_{'_'.join(s for s in scenarios if s in results)}.pt")
    distributed.destroy()


if __name__ == "__main__":
    main(sys.argv)
