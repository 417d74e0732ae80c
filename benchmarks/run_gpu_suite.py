"""The GPU performance suite in one call: attention kernel, Wan2.1-1.3B rCM step breakdown, fused pass, sampling.

    python -m pip install --no-deps --no-build-isolation --no-index . && python benchmarks/run_gpu_suite.py

Sections (all bf16, random weights, B = 1, Wan2.1-1.3B at 480p: latents 16×20×60×104 → 31200 tokens,
512 random text tokens; a different random text tensor stands for the negative prompt of CFG):

1. Attention: ``benchmarks/attention_jvp.py``'s ``bench_shape`` at the 1.3B self- and cross-attention shapes.
2. rCM step breakdown, through the project's own pieces (``rectified_flow`` teacher wrapper with t_scale
   1000 and guidance 5, ``rcm_registry.jvp``, ``triton_jvp`` attention): one forward; the teacher's CFG
   target (two forwards); the sCM JVP pass (tangents on x_t and t, no graph); the student's forward +
   backward (activation checkpointing: without it the graph does not fit in 80 GB); a critic step (one-step
   student rollout without grad, fake-score forward + backward with checkpointing, AdamW step). One
   network object plays every role: they share the architecture, so the times are the same.
3. Fused against separate: one forward on dual tensors with the autograd graph kept on the primal (the
   student's F with grad and its tangent from one pass), then the backward, against a forward + backward
   and a separate JVP pass. Checkpointing cannot wrap dual tensors (its recomputation runs outside the
   dual level), so this section runs the first ``--fused-blocks`` blocks of the same width without it;
   the ratio is per block. The two ways' tangents and gradients are compared (relative L2).
4. Sampling wall time: the ``euler`` sampler, 50 steps with CFG (100 network calls) against the
   ``trigflow_multistep`` sampler at 1, 2 and 4 steps, on the same network.

Times are medians of CUDA-event-timed repetitions after warm-up (the 50-step teacher runs once after one
warm-up step). Prints markdown tables; ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from rcm_plugins.common.fused_ops import fused_kernels
from torch.autograd import forward_ad

import rcm_registry as rr
from rcm_registry.engine.context import SampleContext
from rcm_registry.jvp import jvp, jvp_with_graph

HERE = Path(__file__).resolve().parent


#: ``--smoke`` runs every section but the attention one on a tiny Wan on the CPU, to check the script
#: before spending device time; its numbers mean nothing.
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def time_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    """Median milliseconds: CUDA events on the GPU, the host clock on the CPU (smoke runs)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        if DEVICE != "cuda":
            start_s = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start_s))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def build_wan(num_layers: int | None, *, checkpointing: bool) -> Any:
    """A Wan2.1-1.3B with random weights, created in bf16 on the GPU (no float32 copy first)."""
    overrides = {"num_layers": num_layers} if num_layers else {}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            return rr.registry().build(
                "network",
                "wan2.1-t2v",
                size="1.3B" if DEVICE == "cuda" else "tiny",
                attention={"use": "triton_jvp" if DEVICE == "cuda" else "math"},
                activation_checkpointing=checkpointing,
                **overrides,
            )
    finally:
        torch.set_default_dtype(default)


# -- 1. attention -----------------------------------------------------------------------------------
def attention_section(reps: int) -> tuple[list[str], list[dict[str, Any]]]:
    spec = importlib.util.spec_from_file_location("attention_jvp_bench", HERE / "attention_jvp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [module.bench_shape(name, reps, None) for name in ("self", "cross")]
    lines = [
        "| shape | SDPA fwd ms | fused JVP ms | JVP / SDPA fwd | JVP eff. TFLOP/s | SDPA bwd ms | Triton bwd ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} B{r['B']} H{r['H']} Nq{r['Nq']} Nk{r['Nk']} D{r['D']} | {r['sdpa_fwd_ms']:.2f} "
            f"| {r['jvp_ms']:.2f} | {r['jvp_over_sdpa_fwd']:.2f}× | {r['jvp_tflops_eff']:.0f} "
            f"| {r['sdpa_bwd_ms']:.2f} | {r['bwd_ms']:.2f} |"
        )
    return lines, rows


# -- shared inputs ------------------------------------------------------------------------------------
class Inputs:
    def __init__(self, net: Any, args: argparse.Namespace, seed: int) -> None:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        arch = net.arch
        self.shape = (1, arch.in_channels, args.frames, args.height, args.width)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=g, device=DEVICE, dtype=torch.bfloat16)

        self.x0 = randn(*self.shape)
        self.eps = randn(*self.shape)
        self.text = randn(1, args.text_len, arch.text_dim)
        self.null_text = randn(1, args.text_len, arch.text_dim)
        # A mid-range TrigFlow time; the cost of a pass does not depend on it.
        self.t = torch.full((1,), 0.9, dtype=torch.float64, device=DEVICE)
        c, s = math.cos(0.9), math.sin(0.9)
        self.x_t = (c * self.x0.double() + s * self.eps.double()).bfloat16()
        self.target = randn(*self.shape).float()


def cfg_teacher() -> Any:
    """The ``rectified_flow`` teacher wrapper (t_scale 1000, guidance 5) every section calls the network through."""
    return rr.registry().build("teacher", "rectified_flow", t_scale=1000.0, guidance=5.0)


def student_loss(f: torch.Tensor, inp: Inputs) -> torch.Tensor:
    """A squared error against a random target: the backward costs the same whatever the loss's target is."""
    return (f.float() - inp.target).square().sum()


# -- the sCM step's passes ----------------------------------------------------------------------------
class StepPasses:
    """The sCM student step's passes over one network and one set of inputs, each a callable without
    arguments for ``time_ms``, so that the step breakdown and the checkpointing section time the same code.

    The tangent on x_t is the teacher's CFG output times cos t sin t; it is computed once, here, with the
    ``fused_kernels`` setting the caller builds under."""

    def __init__(self, net: Any, inp: Inputs) -> None:
        self.net, self.inp = net, inp
        self.wrapper = cfg_teacher()
        self.cond, self.null = {"text": inp.text}, {"text": inp.null_text}
        self.cs = torch.cos(inp.t) * torch.sin(inp.t)
        with torch.no_grad():
            f_teacher = self._cfg_target()
        self.dx = (self.cs.to(torch.float64) * f_teacher.double()).bfloat16()

    def _student_F(self, x: torch.Tensor, t: torch.Tensor, *, train: bool) -> torch.Tensor:
        return self.wrapper.denoise(self.net.train(train), x, t, self.cond)[1]

    def _cfg_target(self) -> torch.Tensor:
        x_t, t = self.inp.x_t, self.inp.t
        return self.wrapper.denoise(self.net.eval(), x_t, t, self.cond, guidance=5.0, null_condition=self.null)[1]

    def forward(self) -> None:
        """One network call without grad."""
        with torch.no_grad():
            self._student_F(self.inp.x_t, self.inp.t, train=False)

    def teacher_cfg(self) -> None:
        """The teacher's CFG target: two network calls without grad."""
        with torch.no_grad():
            self._cfg_target()

    def tangent(self) -> None:
        """sCM's JVP pass: the student's tangent along (dx, cos t sin t), no graph."""
        student_F = functools.partial(self._student_F, train=False)
        jvp(student_F, (self.inp.x_t, self.inp.t), (self.dx, self.cs))

    def student(
        self, *, checkpointing: str | None = None, tangent_pass: Literal["separate", "fused"] = "separate"
    ) -> Callable[[], None]:
        """The student's forward + backward, as a callable. ``checkpointing`` (none, selective, block, auto),
        when given, becomes the network's ``activation_checkpointing`` now rather than in each call: setting
        it resets auto's decision, which every timed call would then make again. ``tangent_pass="fused"`` is
        sCM's fused pass: the forward runs on dual tensors and gives the tangent with the graph kept on the
        output (``jvp_with_graph``), so the JVP pass is folded in; it needs checkpointing none."""
        if checkpointing is not None:
            self.net.activation_checkpointing = checkpointing
        inp, student_F = self.inp, functools.partial(self._student_F, train=True)

        def call() -> None:
            if tangent_pass == "fused":
                f, _ = jvp_with_graph(student_F, (inp.x_t, inp.t), (self.dx, self.cs))
            else:
                f = student_F(inp.x_t, inp.t)
            student_loss(f, inp).backward()
            self.net.zero_grad(set_to_none=True)

        return call


# -- 2. step breakdown --------------------------------------------------------------------------------
def step_section(net: Any, inp: Inputs, args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    reg = rr.registry()
    p = StepPasses(net, inp)
    t = inp.t
    optimizer = reg.build("optimizer", "adamw", lr=1e-7, betas=[0.0, 0.999], weight_decay=0.01)(net.parameters())

    def critic_step() -> None:
        start = torch.full((1,), math.atan(80.0), dtype=torch.float64, device=DEVICE)
        net.eval()
        with torch.no_grad():
            x_hat = p.wrapper.denoise(net, inp.eps, start, p.cond)[0]
        c, s = torch.cos(t), torch.sin(t)
        x_c = (c * x_hat.double() + s * inp.x0.double()).bfloat16()  # x0 serves as the fresh noise here
        net.train()
        x0_fake = p.wrapper.denoise(net, x_c, t, p.cond)[0]
        ((x_hat.float() - x0_fake.float()).square().sum() / s.square()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    passes = [
        ("forward (one network call)", p.forward),
        ("teacher forward with CFG (two calls)", p.teacher_cfg),
        ("sCM JVP pass (tangents on x_t and t)", p.tangent),
        ("student forward + backward (activation checkpointing)", p.student()),
        ("critic step (1-step rollout, fake forward + backward, AdamW)", critic_step),
    ]
    # Every pass twice, side by side: token-wise ops (norms, modulation, gated residuals, q/k norm + RoPE)
    # as eager PyTorch, then as the fused Triton kernels.
    ms: dict[str, dict[str, float]] = {"eager": {}, "fused": {}}
    for name, fn in passes:
        for mode, table in ms.items():
            with fused_kernels(mode == "fused"):
                try:
                    table[name] = time_ms(fn, args.warmup, args.reps)
                except torch.cuda.OutOfMemoryError:
                    table[name] = math.nan
            print(f"  {name}, {mode} token ops: {table[name]:.1f} ms", flush=True)
            empty_cache()
    step_name = "sCM student step (CFG target + JVP + forward/backward)"
    for table in ms.values():
        table[step_name] = table[passes[1][0]] + table[passes[2][0]] + table[passes[3][0]]
    unit = {mode: table[passes[0][0]] for mode, table in ms.items()}
    lines = [
        "| pass | eager token ops, ms | × forward | fused token ops, ms | × forward | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ms["eager"]:
        e, f = ms["eager"][name], ms["fused"][name]
        lines.append(
            f"| {name} | {e:.1f} | {e / unit['eager']:.2f} | {f:.1f} | {f / unit['fused']:.2f} | {e / f:.2f}× |"
        )
    optimizer.zero_grad(set_to_none=True)
    empty_cache()
    return lines, ms


# -- 2b. activation checkpointing ---------------------------------------------------------------------------
def timed_with_peak(fn: Callable[[], None], net: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``fn``'s median ms (nan when it runs out of memory) and the peak device memory over its runs."""
    empty_cache()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        ms = time_ms(fn, args.warmup, args.reps)
    except torch.cuda.OutOfMemoryError:
        ms = math.nan
        net.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if DEVICE == "cuda" else math.nan
    return {"fwd_bwd_ms": ms, "peak_gib": peak}


def checkpointing_section(net: Any, inp: Inputs, args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The student's forward + backward with each ``activation_checkpointing`` mode (fused token ops), its
    peak memory, and the sCM student step it makes with the CFG target and the JVP pass (timed here too)."""
    results: dict[str, Any] = {}
    with fused_kernels(True):
        p = StepPasses(net, inp)
        base = {name: time_ms(fn, args.warmup, args.reps) for name, fn in
                (("forward", p.forward), ("cfg", p.teacher_cfg), ("jvp", p.tangent))}  # fmt: skip
        results["passes"] = base
        for mode in ("none", "selective", "block", "auto"):
            row = timed_with_peak(p.student(checkpointing=mode), net, args)
            decision = net.checkpointing.decision
            row["decision"] = None if decision is None else {"mode": decision.mode, "reason": decision.reason}
            row["step_ms"] = base["cfg"] + base["jvp"] + row["fwd_bwd_ms"]
            results[mode] = row
            print(
                f"  {mode}: forward + backward {row['fwd_bwd_ms']:.1f} ms, peak {row['peak_gib']:.1f} GiB", flush=True
            )
        # sCM's tangent_pass: fused: the student's forward with grad and its tangent in one dual pass, then the
        # backward (no checkpointing: it cannot recompute dual tensors).
        fused_pass = p.student(checkpointing="none", tangent_pass="fused")
        fused = {**timed_with_peak(fused_pass, net, args), "decision": None}
        fused["step_ms"] = base["cfg"] + fused["fwd_bwd_ms"]
        results["none, fused tangent pass"] = fused
    net.activation_checkpointing = "block"
    empty_cache()
    unit = base["forward"]
    lines = [
        f"forward {unit:.1f} ms, CFG target {base['cfg']:.1f} ms ({base['cfg'] / unit:.2f}×), "
        f"JVP pass {base['jvp']:.1f} ms ({base['jvp'] / unit:.2f}×)",
        "",
        "| activation_checkpointing | forward + backward ms | × forward | peak GiB | sCM student step ms | × forward |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in ("none", "selective", "block", "auto", "none, fused tangent pass"):
        row = results[mode]
        label = mode if row["decision"] is None else f"auto → {row['decision']['mode']}"
        if mode.endswith("fused tangent pass"):
            label = "none, `tangent_pass: fused` (forward + JVP + backward in the first two columns)"
        if math.isnan(row["fwd_bwd_ms"]) and DEVICE == "cuda":
            # Out of memory (timed_with_peak): the peak is where the allocator gave up.
            oom = f"out of memory at {row['peak_gib']:.1f} GiB"
            lines.append(f"| {label} | {oom} | – | ≥ {row['peak_gib']:.1f} | – | – |")
            continue
        lines.append(
            f"| {label} | {row['fwd_bwd_ms']:.1f} | {row['fwd_bwd_ms'] / unit:.2f} | {row['peak_gib']:.1f} "
            f"| {row['step_ms']:.1f} | {row['step_ms'] / unit:.2f} |"
        )
    if results["auto"]["decision"] is not None:
        lines += ["", f"auto's decision: {results['auto']['decision']['reason']}"]
    return lines, results


# -- 3. fused pass --------------------------------------------------------------------------------------
def fused_section(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    torch.manual_seed(0)
    net = build_wan(args.fused_blocks, checkpointing=False).train()
    inp = Inputs(net, args, seed=2)
    wrapper = cfg_teacher()
    cond = {"text": inp.text}
    t, x_t = inp.t, inp.x_t
    cs = torch.cos(t) * torch.sin(t)
    dx = inp.eps  # any tangent direction costs the same; random, so nothing is trivially zero

    def student_F(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return wrapper.denoise(net, a, b, cond)[1]

    def grads() -> torch.Tensor:
        return torch.cat([p.grad.flatten().float() for p in net.parameters() if p.grad is not None])

    def separate() -> torch.Tensor:
        f = student_F(x_t, t)
        student_loss(f, inp).backward()
        _, tangent = jvp(student_F, (x_t, t), (dx, cs))
        return tangent

    def fused() -> torch.Tensor:
        with forward_ad.dual_level():
            out = student_F(forward_ad.make_dual(x_t, dx), forward_ad.make_dual(t, cs))
            primal, tangent = forward_ad.unpack_dual(out)
            tangent = tangent.detach()
            loss = student_loss(primal, inp)
        loss.backward()
        return tangent

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tan_sep = separate()
    g_sep = grads()
    net.zero_grad(set_to_none=True)
    tan_fused = fused()
    g_fused = grads()
    net.zero_grad(set_to_none=True)
    err_tangent, err_grad = rel(tan_fused, tan_sep), rel(g_fused, g_sep)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else math.nan
    with fused_kernels(False):  # the kernels' tangent against eager forward-mode AD's
        _, tan_eager = jvp(student_F, (x_t, t), (dx, cs))
    err_kernels = rel(tan_sep, tan_eager)
    del g_sep, g_fused, tan_eager

    def run(fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            fn()
            net.zero_grad(set_to_none=True)

        return call

    def fwd_bwd() -> None:
        student_loss(student_F(x_t, t), inp).backward()

    ms: dict[str, dict[str, float]] = {}
    for mode in ("eager", "fused"):
        with fused_kernels(mode == "fused"):
            m = {
                "forward + backward": time_ms(run(fwd_bwd), args.warmup, args.reps),
                "JVP pass (no graph)": time_ms(lambda: jvp(student_F, (x_t, t), (dx, cs)), args.warmup, args.reps),
                "fused: dual forward with graph + backward": time_ms(run(fused), args.warmup, args.reps),
            }
        m["separate: forward + backward, then JVP pass"] = m["forward + backward"] + m["JVP pass (no graph)"]
        m["ratio"] = m["fused: dual forward with graph + backward"] / m["separate: forward + backward, then JVP pass"]
        ms[mode] = m
    e, f = ms["eager"], ms["fused"]
    lines = [
        f"Wan2.1-1.3B width, first {args.fused_blocks} of 30 blocks, no activation checkpointing.",
        "",
        "| pass | eager token ops, ms | fused token ops, ms |",
        "|---|---:|---:|",
        *[f"| {k} | {e[k]:.1f} | {f[k]:.1f} |" for k in e if k != "ratio"],
        f"| **fused / separate** | **{e['ratio']:.2f}×** | **{f['ratio']:.2f}×** |",
        "",
        f"Fused vs separate (fused token ops): tangent relative L2 {err_tangent:.1e}, parameter gradient "
        f"{err_grad:.1e} (bf16); kernels' tangent vs eager forward-mode AD {err_kernels:.1e}; peak memory "
        f"{peak_gib:.1f} GiB.",
    ]
    net.cpu()  # frees its GPU memory for the sections after this one
    empty_cache()
    numbers = {"eager": e, "fused": f, "err_tangent": err_tangent, "err_grad": err_grad, "err_kernels": err_kernels}
    return lines, {**numbers, "peak_gib": peak_gib}


# -- 4. sampling --------------------------------------------------------------------------------------
def sampling_section(net: Any, inp: Inputs, args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    reg = rr.registry()
    net.eval()
    wrapper = cfg_teacher()
    schedule = reg.build("schedule", "rectified_flow", time_scale=1000.0, shift=5.0)

    def context(seed: int) -> SampleContext:
        return SampleContext(
            net=net,
            shape=inp.shape,
            condition={"text": inp.text},
            null_condition={"text": inp.null_text},
            generator=torch.Generator(device=DEVICE).manual_seed(seed),
            schedule=schedule,
            teacher=wrapper,
            device=torch.device(DEVICE),
            dtype=torch.bfloat16,
        )

    def timed(sampler: Any, reps: int) -> float:
        times = []
        for i in range(reps):
            ctx = context(i)
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                sampler(ctx)
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    teacher = reg.build("sampler", "euler", steps=args.teacher_steps, guidance=5.0)
    timed(reg.build("sampler", "euler", steps=1, guidance=5.0), 1)  # warm-up: kernels, allocator
    seconds = {f"teacher, Euler {args.teacher_steps} steps, CFG": timed(teacher, 1)}
    nfe = {f"teacher, Euler {args.teacher_steps} steps, CFG": 2 * args.teacher_steps}
    for steps in (1, 2, 4):
        sampler = reg.build("sampler", "trigflow_multistep", steps=steps)
        timed(sampler, 1)
        name = f"student, {steps} step{'s' if steps > 1 else ''}"
        seconds[name] = timed(sampler, args.sample_reps)
        nfe[name] = steps
    base = next(iter(seconds.values()))
    lines = ["| sampler | NFE | wall time (s) | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {nfe[k]} | {v:.3f} | {base / v:.1f}× |" for k, v in seconds.items()]
    return lines, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=104)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--attention-reps", type=int, default=10)
    parser.add_argument("--fused-blocks", type=int, default=2)
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--sample-reps", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["attention", "steps", "checkpointing", "fused", "sampling"]
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="check the script on the CPU with a tiny Wan")
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        args.skip.append("attention")
        args.frames, args.height, args.width, args.text_len, args.fused_blocks = 2, 4, 6, 5, 1
        args.teacher_steps, args.reps, args.sample_reps = 3, 1, 1
    elif not torch.cuda.is_available():
        sys.exit("run_gpu_suite.py needs a CUDA GPU (or --smoke for a CPU check)")
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU smoke run (tiny Wan)"
    header = (
        f"{device_name}, torch {torch.__version__}; Wan2.1-1.3B random weights, bf16, B=1, "
        f"latents {args.frames}×{args.height}×{args.width}, text {args.text_len}; attention `triton_jvp`; "
        f"median of {args.reps} after {args.warmup} warm-up"
    )
    out: dict[str, Any] = {"header": header}
    tables: list[tuple[str, list[str]]] = []

    def section(title: str, key: str, fn: Callable[[], tuple[list[str], Any]]) -> None:
        if key in args.skip:
            return
        print(f"## {title}", flush=True)
        t0 = time.perf_counter()
        try:
            lines, numbers = fn()
        except Exception:  # one broken section should not cost the others' device time
            lines, numbers = [f"failed:\n```\n{traceback.format_exc()[-1500:]}```"], None
        tables.append((f"{title} ({time.perf_counter() - t0:.0f} s)", lines))
        out[key] = numbers
        print("\n".join(lines), flush=True)

    section("Attention kernel", "attention", lambda: attention_section(args.attention_reps))
    torch.manual_seed(0)
    net = None
    if {"steps", "checkpointing", "sampling"} - set(args.skip):
        net = build_wan(None, checkpointing=True)
        inp = Inputs(net, args, seed=1)
    section("rCM step breakdown", "steps", lambda: step_section(net, inp, args))
    section("Activation checkpointing", "checkpointing", lambda: checkpointing_section(net, inp, args))
    section("Sampling", "sampling", lambda: sampling_section(net, inp, args))
    net = inp = None  # the full-depth network's memory goes back before the fused section builds its own
    empty_cache()
    section("Fused primal-with-grad + tangent pass", "fused", lambda: fused_section(args))

    print(f"\n# GPU suite: {header}; {time.perf_counter() - started:.0f} s in all\n")
    for title, lines in tables:
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
