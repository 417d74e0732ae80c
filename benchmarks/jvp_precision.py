"""The bf16 JVP study, part (a): how far sCM's tangent is from a float64 reference, per way of computing it.

    python benchmarks/jvp_precision.py --device cuda --json jvp_precision.json --out jvp_precision_a.md

On the moving-digits student at GPU size (recipes/moving_digits/scm.yaml's network: Wan2.1 at width 256, 8
blocks, 576 tokens a clip), with random initial weights and with the trained teacher's (the weights a student
starts from), on training-like inputs: a batch of real clips, t drawn from the recipe's p_G, the tangent
direction dx_t/dt = cos t·sin t·F_T from the trained teacher's CFG target in float64. Each way computes
dF_θ⁻/dt exactly as the `scm` loss does (:func:`rcm_plugins.distill.scm.student_tangent`):

* bf16, `triton_jvp` attention and the fused token ops (the GPU recipes' way);
* bf16, eager forward-mode AD (`math` attention, the fused ops' plain-torch references);
* fp32, eager forward-mode AD, and fp32 with `triton_jvp` and the fused ops;
* the semi-continuous tangent (AD along x_t, a finite difference of step h in t), bf16 and fp32;

against the same network in float64 with `math` attention (forward-mode AD through plain torch ops). Per
sample: the relative L2 error of the tangent dF, and the error of the quantity training regresses on, sCM's
normalised target ĝ = g/(‖g‖₂ + 0.1) with r = 1 (its distance to the reference's ĝ; ‖ĝ‖ < 1). Median, 90th
percentile and maximum over the batch, and the median time of one tangent pass.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rcm_plugins.distill.scm import student_tangent
from torch import Tensor

from rcm_registry import registry
from rcm_registry.engine.graph import build_network, read_weights
from rcm_registry.engine.trainer import autocast
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.sections import WeightsRef
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.state_dicts import load_strict

ROOT = Path(__file__).resolve().parent

#: name → (attention backend, fused token ops, precision, finite-difference step or None for the exact JVP)
WAYS: dict[str, tuple[str, bool, str, float | None]] = {
    "bf16, triton_jvp + fused ops": ("triton_jvp", True, "bf16", None),
    "bf16, eager forward-mode AD": ("math", False, "bf16", None),
    "fp32, eager forward-mode AD": ("math", False, "fp32", None),
    "fp32, triton_jvp + fused ops": ("triton_jvp", True, "fp32", None),
    "bf16, semi-continuous (h = 1e-4)": ("triton_jvp", True, "bf16", 1e-4),
    "fp32, semi-continuous (h = 1e-4)": ("math", False, "fp32", 1e-4),
}


#: The student's recipe; --recipe replaces it (scm_tiny.yaml: a check on the CPU).
RECIPES = [ROOT.parent / "recipes/moving_digits/scm.yaml"]


def recipe_with(sets: list[str]) -> Any:
    path = RECIPES[0]
    return validate_recipe(load_recipe(path, sets), registry(), str(path))


def student(teacher_run: Path, attention: str, fused: bool, weights: dict[str, Tensor] | None) -> torch.nn.Module:
    """The recipe's student network with ``attention`` and ``fused`` ops, holding ``weights`` (None: random)."""
    sets = [
        f"networks.teacher.weights.path={teacher_run}",
        f"networks.student.attention.use={attention}",
        f"networks.student.fused_ops={'true' if fused else 'false'}",
    ]
    net = build_network(recipe_with(sets).networks["student"])
    if weights is not None:
        load_strict(net, weights, source=str(teacher_run))
    return net.eval().requires_grad_(False)


def relative(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ‖a − b‖₂ / ‖b‖₂."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


def normalised_target(F_minus: Tensor, F_T: Tensor, x_t: Tensor, dF: Tensor, t: Tensor) -> Tensor:
    """sCM's ĝ at r = 1 (the `scm` loss's formula, float64)."""
    c, s = (v.reshape(-1, *([1] * (x_t.dim() - 1))) for v in (torch.cos(t), torch.sin(t)))
    g = -c * c * (F_minus - F_T) - (c * s * x_t + dF)
    norm = g.reshape(g.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (g.dim() - 1)))
    return g / (norm + 0.1)


def summary(values: Tensor) -> dict[str, float]:
    v = values.double().cpu()
    return {"median": float(v.median()), "p90": float(v.quantile(0.9)), "max": float(v.max())}


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def measure_way(
    args: argparse.Namespace,
    way: tuple[str, bool, str, float | None],
    state: dict[str, Tensor],
    F_of: Callable[[torch.nn.Module], Callable[[Tensor, Tensor], Tensor]],
    x_t: Tensor,
    t: Tensor,
    dx: Tensor,
    F_T: Tensor,
    reference: tuple[Tensor, Tensor, Tensor],
) -> dict[str, Any]:
    """One way's errors against the float64 ``reference`` (F, dF, ĝ) and its tangent pass's time."""
    attention, fused, precision, fd_step = way
    F_ref, dF_ref, g_ref = reference
    device = x_t.device
    net = student(args.teacher, attention, fused, state).to(device)
    xf, dxf = x_t.float(), dx.float()
    with autocast(device, precision):
        with torch.no_grad():
            F_minus = F_of(net)(xf, t).double()

        def tangent() -> Tensor:
            return student_tangent(F_of(net), xf, t, dxf, F_minus, fd_step=fd_step)

        dF = tangent()
        ms = median_ms(tangent, device)
    g = normalised_target(F_minus, F_T, x_t, dF, t)
    return {
        "tangent_relative_error": summary(relative(dF, dF_ref)),
        "target_error": summary((g - g_ref).reshape(g.shape[0], -1).norm(dim=1)),
        "F_relative_error": summary(relative(F_minus, F_ref)),
        "ms": ms,
    }


def study(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    base = recipe_with([f"networks.teacher.weights.path={args.teacher}"])
    body = base.body
    wrapper = body.teacher_wrapper.build()
    p_G = body.time["student"].build()
    dataset = body.data.build()
    gen = torch.Generator().manual_seed(args.seed)
    batch = dataset.next_batch(args.batch, gen).to(device)
    t = p_G(args.batch, gen).to(device)
    eps = torch.randn(batch.x0.shape, generator=gen, dtype=torch.float64).to(device)
    cond = batch.condition
    trained = read_weights(WeightsRef(path=str(args.teacher)))

    teacher64 = student(args.teacher, "math", False, trained).to(device, torch.float64)
    tt = t.reshape(-1, *([1] * (batch.x0.dim() - 1)))
    x_t = torch.cos(tt) * batch.x0.double() + torch.sin(tt) * eps
    with torch.no_grad():
        F_T = wrapper.denoise(teacher64, x_t, t, cond, guidance=wrapper.guidance, null_condition=batch.null_condition)[
            1
        ]
    dx = (torch.cos(t) * torch.sin(t)).reshape_as(tt) * F_T
    del teacher64

    results: dict[str, Any] = {"batch": args.batch, "seed": args.seed, "t": summary(t), "weights": {}}
    for label, weights in (("initialisation", None), ("trained teacher", trained)):
        torch.manual_seed(args.seed)  # one random initialisation for every way
        init = None if weights is not None else student(args.teacher, "math", False, None).state_dict()
        state = weights if weights is not None else init
        ref = student(args.teacher, "math", False, state).to(device, torch.float64)

        def F_of(net: torch.nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
            return lambda x, s: wrapper.denoise(net, x, s, cond)[1]

        with torch.no_grad():
            F_ref = F_of(ref)(x_t, t).double()
        dF_ref = student_tangent(F_of(ref), x_t, t, dx, F_ref)
        g_ref = normalised_target(F_ref, F_T, x_t, dF_ref, t)
        del ref
        rows = {}
        for name, way in WAYS.items():
            rows[name] = measure_way(args, way, state, F_of, x_t, t, dx, F_T, (F_ref, dF_ref, g_ref))
            print(
                f"{label:>16} | {name:<34} | tangent rel. err. median "
                f"{rows[name]['tangent_relative_error']['median']:.3e} | target err. median "
                f"{rows[name]['target_error']['median']:.3e} | {rows[name]['ms']:.1f} ms",
                flush=True,
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["weights"][label] = rows
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results["torch"] = torch.__version__
    results["date"] = time.strftime("%Y-%m-%d")
    return results


def render(results: dict[str, Any], command: str) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2e} / {s['p90']:.2e} / {s['max']:.2e}"

    lines = [
        f"`{command}` on {results['device']}, torch {results['torch']}, {results['date']}; batch of "
        f"{results['batch']} clips, t from p_G (median {results['t']['median']:.3f}, max {results['t']['max']:.3f}).",
        "",
        "| weights | way | tangent dF: relative error (median / p90 / max) | target ĝ: error (median / p90 / max) "
        "| F: relative error (median) | tangent pass (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, rows in results["weights"].items():
        for name, r in rows.items():
            lines.append(
                f"| {label} | {name} | {cell(r['tangent_relative_error'])} | {cell(r['target_error'])} | "
                f"{r['F_relative_error']['median']:.2e} | {r['ms']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("runs/moving_digits/teacher"), help="trained teacher run")
    parser.add_argument(
        "--recipe", type=Path, default=RECIPES[0], help="the student's recipe (scm_tiny.yaml: a CPU check)"
    )
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), help="a subset of the ways (default: all)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    RECIPES[0] = args.recipe
    for name in set(WAYS) - set(args.ways or WAYS):
        del WAYS[name]
    results = study(args)
    text = render(results, shlex.join(["python", "benchmarks/jvp_precision.py", *sys.argv[1:]]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
