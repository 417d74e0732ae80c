"""End-to-end generation, prompt in, video out, through ``rcm generate``'s code path, with each speed option.

    python -m pip install --no-deps --no-build-isolation --no-index . && \
        python benchmarks/generate_e2e.py --json benchmarks/generate_e2e.json

    python benchmarks/generate_e2e.py --smoke      # tiny networks and codecs on the CPU: checks the script

What runs, for Wan2.1-T2V-1.3B at 480p (81 × 480 × 832 → latents 16 × 21 × 60 × 104) and
Cosmos-Predict2-2B-Text2Image at 1024² (latents 16 × 1 × 128 × 128), all with random weights in bf16 on one
GPU: the recipe (``recipes/wan2.1/t2v_1.3b_rcm.yaml``, ``recipes/cosmos-predict2/t2i_2b_rcm.yaml``) with its
network built at full size, its text encoder (umT5-XXL for Wan, T5-11B's encoder for Cosmos) and VAE (the
Wan2.1 ``AutoencoderKLWan``) built from their published hyper-parameters (below; nothing is downloaded; a
word-level tokenizer stands in for the sentencepiece one: prompts are padded to 512 tokens either way), and
:func:`rcm_registry.generate.generate` (what ``rcm generate`` calls) with a :class:`StageProfiler`:

1. the teacher, 50 Euler steps with CFG (``trigflow_euler``; 100 network calls), and the student at 1, 2 and
   4 steps (the recipe's ``trigflow_multistep``), after one warm-up generation: per-stage table each;
2. each speed option off → on in the same process, on the 4-step student:
   (a) the VAE decode: diffusers' float32 frame-by-frame decode, then bf16 (``decode_dtype``), then bf16 in
       chunks of latent frames (``decode_chunk_frames``), then the tiny decoder (the ``taehv`` codec, random
       weights of taew2_1's shape, whole and in chunks); and a 720p decode (Wan: 81 × 720 × 1280) of each,
       to show which fit (an out-of-memory error is reported, not raised); each variant timed after one
       warm-up decode of its own;
   (b) the negative-prompt embedding encoded every time → from the per-process cache;
   (c) the text encoder kept on the GPU → offloaded to the CPU after encoding (peak memory of the later
       stages);
   (d) eager → ``torch.compile`` of the network (the compiling call timed on its own), and eager → CUDA-graph
       replay (``--cuda-graphs``; the capturing call timed on its own; CUDA only);
   (e) the low-precision inference options: ``int8_sage`` attention (P·V in bf16, and in FP8), FP8 linears,
       both, and ``int8_sage`` with CUDA graphs (after a warm-up generation each; each a copy of the network
       with the student's weights, the eager network parked on the CPU meanwhile, so that peak memory counts
       one network);
   and end to end with the options that make it faster together ("fastest exact set": bf16 channels-last
   chunked decode with cuDNN's algorithm search, the cached negative prompt), then with int8 attention, then
   with FP8 linears on top (with P·V in bf16, then in FP8), then int8 attention with CUDA graphs, then
   everything (FP8 P·V, FP8 linears, CUDA graphs), and the exact set and everything with the tiny decoder
   in the VAE's place (its quality is its own, not the VAE's); the text encoder's offload (memory for
   seconds) and ``torch.compile`` (no faster here) are left out of those rows.

Prints markdown tables; ``--json`` writes every profile. Times are single runs (after the warm-up), with CUDA
synchronised around each stage; peak memory is ``torch.cuda.max_memory_allocated`` reset at each stage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PROMPT = "a red fox runs through the snow at night"
NEGATIVE = "blurry, low quality, static"


@attrs.frozen
class Model:
    recipe: str
    text_codec: str  # umt5 | t5
    frames: int
    height: int
    width: int
    #: The 720p decode check (Wan only).
    big: tuple[int, int, int] | None
    #: Teacher ODE settings: Wan2.1's shift 3 at 480p; Cosmos' sigma_max 80 (its recipe's synth command).
    teacher_sample: str


MODELS = {
    "wan2.1-1.3b": Model(
        recipe="recipes/wan2.1/t2v_1.3b_rcm.yaml",
        text_codec="umt5",
        frames=81,
        height=480,
        width=832,
        big=(81, 720, 1280),
        teacher_sample="{use: trigflow_euler, steps: 50, shift: 3.0}",
    ),
    "cosmos-predict2-2b": Model(
        recipe="recipes/cosmos-predict2/t2i_2b_rcm.yaml",
        text_codec="t5",
        frames=1,
        height=1024,
        width=1024,
        big=None,
        teacher_sample="{use: trigflow_euler, steps: 50, shift: 3.0, sigma_max: 80.0}",
    ),
}

# The encoders of umT5-XXL (google/umt5-xxl, Wan2.1's text encoder) and T5-11B (google-t5/t5-11b,
# Cosmos-Predict2's): the values of their published config.json files.
TEXT_ENCODERS: dict[str, dict[str, Any]] = {
    "umt5": dict(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "t5": dict(
        vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
    ),
}  # fmt: skip
# The Wan2.1 VAE (Wan2.1-T2V-1.3B-Diffusers/vae/config.json; diffusers' AutoencoderKLWan defaults).
WAN_VAE: dict[str, Any] = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
)  # fmt: skip
#: The decode options that the speed section found fastest (bf16, channels-last convolutions, cuDNN's timed
#: algorithm choice); the chunk length comes from --chunk-frames.
FAST_DECODE: dict[str, Any] = {"decode_dtype": "bf16", "decode_channels_last": True, "decode_cudnn_benchmark": True}
TINY_VAE: dict[str, Any] = dict(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True])


def log(text: str = "") -> None:
    print(text, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.dtype = torch.float32 if args.smoke else torch.bfloat16
        self.chunk = args.chunk_frames
        self.compile_backend = "aot_eager" if args.smoke else args.compile_backend
        self.compile_mode = None if args.smoke else args.compile_mode
        self.student_steps = args.student_steps
        self.teacher_steps = args.teacher_steps
        self.results: dict[str, Any] = {"device": self._device_name(), "smoke": self.smoke, "models": {}}

    def _device_name(self) -> str:
        return torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"

    # -- building -----------------------------------------------------------------------------------
    def recipe(self, model: Model, extra: list[str]) -> Any:
        from rcm_registry.plugin_loading import registry
        from rcm_registry.recipe.load import load_recipe
        from rcm_registry.recipe.validate import validate_recipe

        # The student's attention must take JVPs (the recipe's sCM term checks it); triton_jvp runs primal-only
        # calls, which is all that sampling makes, through SDPA.
        attention, student_attention = ("math", "math") if self.smoke else ("sdpa", "triton_jvp")
        sets = [
            "networks.teacher.weights=null",
            f"networks.teacher.attention={{use: {attention}}}",
            f"networks.student.attention={{use: {student_attention}}}",
            "codecs.text.path=random-weights",
            "codecs.vae.path=random-weights",
            "data.path=unused",
            *(["networks.teacher.size=tiny", "codecs.text.max_length=16"] if self.smoke else []),
            *extra,
        ]
        path = ROOT / model.recipe
        return validate_recipe(load_recipe(path, sets), registry(), str(path), open_files=False)

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Modules created on the device in the benchmark's dtype (no float32 copy of a 5B encoder first)."""
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                yield
        finally:
            torch.set_default_dtype(default)

    def network(self, recipe: Any) -> torch.nn.Module:
        from rcm_registry.engine.graph import build_network

        with self.building():
            net = build_network(recipe.networks["student"])
        return net.eval().requires_grad_(False)

    def text_codec(self, recipe: Any, model: Model, text_dim: int) -> Any:
        import transformers
        from rcm_plugins.data._t5_text import T5TextEncoder
        from rcm_plugins.data.tiny import word_tokenizer

        spec = recipe.body.codecs["text"]
        tokenizer = word_tokenizer(PROMPT.split() + NEGATIVE.replace(",", "").split())
        if self.smoke:
            hp = dict(vocab_size=tokenizer.vocab_size, d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=1,
                      num_heads=max(1, text_dim // 8), relative_attention_num_buckets=8)  # fmt: skip
        else:
            hp = TEXT_ENCODERS[model.text_codec]
            assert hp["d_model"] == text_dim, f"{model.text_codec} is {hp['d_model']}-d, the network reads {text_dim}"
        umt5 = model.text_codec == "umt5"
        config_class = transformers.UMT5Config if umt5 else transformers.T5Config
        model_class = transformers.UMT5EncoderModel if umt5 else transformers.T5EncoderModel
        config = config_class(**hp, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        with self.building():
            encoder = model_class(config).to(self.dtype)
        return T5TextEncoder(
            spec.config, model_class.__name__, "", spec.component.name, model=encoder, tokenizer=tokenizer
        )

    def vae_codec(self, recipe: Any, base: Any, **options: Any) -> Any:
        """The recipe's VAE codec around a copy of ``base`` (float32 weights), with ``options`` set; with
        ``tiny_decoder=True`` the ``taehv`` codec instead (the taew2_1 decoder with random weights, bf16,
        ``decode_chunk_frames`` from ``options``)."""
        from rcm_plugins.data._wan_vae import WanVideoCodec

        if options.pop("tiny_decoder", False):
            from rcm_plugins.data._tiny_video_decoder import TinyVideoDecoder
            from rcm_plugins.data.taehv_codec import TaehvCodec, TaehvCodecConfig

            config = TaehvCodecConfig(path="(random weights)", dtype="bf16", **options)
            return TaehvCodec(config, decoder=TinyVideoDecoder(base.config.z_dim)).to(self.device)
        spec = recipe.body.codecs["vae"]
        config = attrs.evolve(spec.config, **options)
        return WanVideoCodec(config, "", spec.component.name, vae=copy.deepcopy(base)).to(self.device)

    # -- measuring ----------------------------------------------------------------------------------
    def generate(self, gen: Any, steps: int | None, **options: Any) -> tuple[Any, Any]:
        from rcm_registry.generate import generate
        from rcm_registry.profiling import StageProfiler

        profiler = StageProfiler(self.device)
        shape = gen.codecs["vae"].latent_shape(*self.size)
        result = generate(gen, PROMPT, shape, steps=steps, negative_prompt=NEGATIVE, profiler=profiler, **options)
        return result, profiler

    def lowprec_network(
        self, recipe: Any, base: torch.nn.Module, attention: str | None, fp8: bool, graphs: bool = False
    ) -> Any:
        """``base``'s weights in a network that samples with the ``attention`` backend and/or FP8 linears,
        replayed from CUDA graphs with ``graphs``, as ``rcm generate --attention NAME --fp8-linear
        --cuda-graphs`` loads it. ``int8_sage_fp8pv`` is ``int8_sage`` with ``pv: fp8`` (the recipe's
        ``inference.attention: {use: int8_sage, pv: fp8}``)."""
        from rcm_registry import registry
        from rcm_registry.engine.graph import build_network
        from rcm_registry.engine.inference import apply_after_loading, inference_options, with_attention
        from rcm_registry.schema import ComponentSpec

        fp8_pv = attention == "int8_sage_fp8pv"
        options = inference_options(recipe, "int8_sage" if fp8_pv else attention, fp8, graphs)
        if fp8_pv:
            reg = registry()
            spec = ComponentSpec(reg.get("attention", "int8_sage"), reg.config("attention", "int8_sage", pv="fp8"))
            options = attrs.evolve(options, attention=spec)
        entry = recipe.networks["student"]
        if options.attention is not None:
            entry = attrs.evolve(entry, spec=with_attention(entry.spec, options.attention, "student"))
        with self.building():
            net = build_network(entry)
        net.load_state_dict(base.state_dict())
        net.eval().requires_grad_(False)
        return apply_after_loading(net, options)

    @contextlib.contextmanager
    def parked(self, net: torch.nn.Module) -> Iterator[None]:
        """``net`` on the CPU for the block (a low-precision copy samples meanwhile), then back."""
        if self.device.type != "cuda":
            yield
            return
        net.to("cpu")
        torch.cuda.empty_cache()
        try:
            yield
        finally:
            net.to(self.device)

    def report(self, label: str, profiler: Any, per_stage: bool = False) -> dict[str, Any]:
        log(f"\n#### {label}\n")
        log(profiler.table(per_stage=per_stage))
        return profiler.as_dict()

    def run_model(self, name: str, model: Model) -> None:
        from diffusers import AutoencoderKLWan

        from rcm_registry.engine.sampling import LoadedRun

        log(f"\n## {name}\n")
        out: dict[str, Any] = {"runs": {}, "options": {}}
        self.size = (model.frames, 16, 16) if self.smoke else (model.frames, model.height, model.width)
        if self.smoke and model.frames > 1:
            self.size = (5, 16, 16)
        recipe = self.recipe(model, [])
        teacher_recipe = self.recipe(model, [f"sample={model.teacher_sample}"])
        torch.manual_seed(0)
        net = self.network(recipe)
        text = self.text_codec(recipe, model, int(net.arch.text_dim))
        base_vae = AutoencoderKLWan(**(TINY_VAE if self.smoke else WAN_VAE)).eval()
        vae = self.vae_codec(recipe, base_vae)
        body = recipe.body

        def loaded(r: Any, role: str) -> LoadedRun:
            return LoadedRun(
                recipe=r, checkpoint=None, role=role, net=net, used_ema=False, device=self.device,
                schedule=body.schedule.build() if body.schedule else None, teacher=body.teacher_wrapper.build(),
                codecs={"text": text, "vae": vae},
            )  # fmt: skip

        student, teacher = loaded(recipe, "student"), loaded(teacher_recipe, "teacher")
        self.generate(student, 1)  # warm-up: kernels, allocator, cuDNN's algorithm search

        # 1. teacher and student end to end
        _, prof = self.generate(teacher, self.teacher_steps)
        out["runs"][f"teacher {self.teacher_steps} steps CFG"] = self.report(
            f"{name}: teacher, {self.teacher_steps} Euler steps with CFG", prof
        )
        for steps in self.student_steps:
            _, prof = self.generate(student, steps)
            out["runs"][f"student {steps} steps"] = self.report(f"{name}: student, {steps} steps", prof, True)

        # 2. the speed options, off -> on
        rows: list[tuple[str, str, str, str]] = []
        opts: dict[str, Any] = out["options"]
        steps = max(self.student_steps)

        # (a) VAE decode
        variants = {
            "fp32 frame by frame (diffusers)": {},
            "bf16 frame by frame": {"decode_dtype": "bf16"},
            f"bf16 in chunks of {self.chunk}": {"decode_dtype": "bf16", "decode_chunk_frames": self.chunk},
            f"bf16 in chunks of {self.chunk}, channels last": {**FAST_DECODE, "decode_cudnn_benchmark": False},
            f"bf16 in chunks of {self.chunk}, channels last, cuDNN benchmark": FAST_DECODE,
            "tiny decoder (taehv), bf16": {"tiny_decoder": True},
            f"tiny decoder (taehv), bf16 in chunks of {self.chunk}": {
                "tiny_decoder": True, "decode_chunk_frames": self.chunk,
            },
        }  # fmt: skip
        decode: dict[str, Any] = {}
        latents = None
        for label, options in variants.items():
            student.codecs["vae"] = self.vae_codec(recipe, base_vae, **options)
            # Timed on the second generation: a fresh codec's first decode pays cuDNN's algorithm search and
            # the allocator's growth after empty_cache, which no later generation does.
            self.generate(student, steps)
            result, prof = self.generate(student, steps)
            latents = result.latents
            decode[label] = prof.totals()["vae decode"]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        opts["vae decode"] = {k: attrs.asdict(v) for k, v in decode.items()}
        first, *rest = decode
        for label in rest:
            rows.append(
                (f"VAE decode: {first} → {label}", "decode s / peak GiB", fmt(decode[first]), fmt(decode[label]))
            )
        if model.big is not None:
            opts["vae decode 720p"] = self.big_decode(recipe, base_vae, model.big, variants, rows)
        student.codecs["vae"] = vae
        del latents

        # (b) negative-prompt cache (the first call above filled it)
        _, off = self.generate(student, steps, cache_negative=False)
        _, on = self.generate(student, steps, cache_negative=True)
        opts["negative cache"] = {"off": off.as_dict(), "on": on.as_dict()}
        negative = [stage(p, "text encoding (negative prompt") for p in (off, on)]
        rows.append(("negative-prompt cache", "negative prompt encoding s", fmt(negative[0]), fmt(negative[1])))

        # (c) text encoder offload
        _, off = self.generate(student, steps)
        _, on = self.generate(student, steps, offload_text_encoder=True)
        text.to(self.device)
        opts["offload text encoder"] = {"off": off.as_dict(), "on": on.as_dict()}
        for group in ("transformer", "vae decode"):
            rows.append(
                (f"offload text encoder: {group}", "s / peak GiB", fmt(off.totals()[group]), fmt(on.totals()[group]))
            )
        offload = on.totals().get("text encoder offload")
        rows.append(("offload text encoder: moving it", "s", "", f"{offload.seconds:.3f}" if offload else ""))

        # (d) torch.compile
        _, off = self.generate(student, steps)
        from rcm_registry.generate import compile_network

        eager = student.net
        compile_network(student, backend=self.compile_backend, mode=self.compile_mode)
        _, first_call = self.generate(student, steps)
        _, on = self.generate(student, steps)
        student.net = eager
        opts["compile"] = {"off": off.as_dict(), "first compiled call": first_call.as_dict(), "on": on.as_dict()}
        rows.append((f"torch.compile ({self.compile_backend}, {self.compile_mode or 'default'})", "transformer s",
                     fmt(off.totals()["transformer"]), fmt(on.totals()["transformer"])))  # fmt: skip
        rows.append(("torch.compile: the compiling call", "transformer s", "", fmt(first_call.totals()["transformer"])))

        # (d) CUDA-graph replay of the same network (CUDA only: on the CPU its row says so)
        cuda = self.device.type == "cuda"
        if cuda:
            from rcm_registry.engine.cuda_graphs import GraphedNetwork

            student.net = GraphedNetwork(eager)
            try:
                _, first_call = self.generate(student, steps)
                _, on = self.generate(student, steps)
            finally:
                student.net = eager
            torch.cuda.empty_cache()  # the graphs' memory pools
            opts["cuda graphs"] = {"off": off.as_dict(), "capturing call": first_call.as_dict(), "on": on.as_dict()}
            eager_s, graphed_s = (fmt(p.totals()["transformer"]) for p in (off, on))
            rows.append(("CUDA graphs", "transformer s", eager_s, graphed_s))
            capturing = fmt(first_call.totals()["transformer"])
            rows.append(("CUDA graphs: the capturing call", "transformer s", "", capturing))
        else:
            rows.append(("CUDA graphs", "transformer s", "", "n/a (CUDA only)"))

        # (e) low-precision inference (their quality cost: benchmarks/moving_digits_table.py --lowprec)
        lowprec = {"int8_sage attention": ("int8_sage", False, False), "FP8 linear": (None, True, False),
                   "int8_sage attention + FP8 linear": ("int8_sage", True, False),
                   "int8_sage attention, FP8 P·V": ("int8_sage_fp8pv", False, False),
                   "int8_sage attention, FP8 P·V + FP8 linear": ("int8_sage_fp8pv", True, False)}  # fmt: skip
        if cuda:
            lowprec["int8_sage attention + CUDA graphs"] = ("int8_sage", False, True)
        for label, (attention, fp8, graphs) in lowprec.items():
            try:  # one failing option should not cost the rest of the run
                with self.parked(eager):
                    student.net = self.lowprec_network(recipe, eager, attention, fp8, graphs)
                    self.generate(student, steps)  # warm-up: the kernels' compilation, the graphs' capture
                    _, on = self.generate(student, steps)
            except Exception as exc:  # reported in the table
                log(f"{label} failed: {type(exc).__name__}: {exc}")
                rows.append(
                    (label, "transformer s", fmt(off.totals()["transformer"]), f"failed ({type(exc).__name__})")
                )
                continue
            finally:
                student.net = eager
            opts[label] = on.as_dict()
            rows.append((label, "transformer s", fmt(off.totals()["transformer"]), fmt(on.totals()["transformer"])))
            if cuda:
                torch.cuda.empty_cache()

        # All together: the options that make generation faster, on one process's fastest path. The text
        # encoder's offload (a memory option: moving umT5-XXL costs seconds a generation) and torch.compile
        # (measured no faster for Wan, slower for Cosmos) stay out; their rows above say what they do.
        # The last rows decode with the tiny decoder instead of the VAE (not exact: its quality is its own).
        fast_vae = self.vae_codec(recipe, base_vae, **FAST_DECODE, decode_chunk_frames=self.chunk)
        tiny_vae = self.vae_codec(recipe, base_vae, tiny_decoder=True)
        sets = [
            ("fastest exact set", None, False, False, fast_vae),
            ("fastest set + int8_sage attention", "int8_sage", False, False, fast_vae),
            ("fastest set + int8_sage attention + FP8 linear", "int8_sage", True, False, fast_vae),
            ("fastest set + int8_sage attention, FP8 P·V + FP8 linear", "int8_sage_fp8pv", True, False, fast_vae),
            ("fastest set + tiny decoder", None, False, False, tiny_vae),
        ]
        if cuda:
            sets += [
                ("fastest set + int8_sage attention + CUDA graphs", "int8_sage", False, True, fast_vae),
                ("fastest set + int8_sage attention, FP8 P·V + FP8 linear + CUDA graphs",
                 "int8_sage_fp8pv", True, True, fast_vae),
                ("fastest set + int8_sage attention, FP8 P·V + FP8 linear + CUDA graphs + tiny decoder",
                 "int8_sage_fp8pv", True, True, tiny_vae),
            ]  # fmt: skip
        for label, attention, fp8, graphs, decoder in sets:
            copy_needed = bool(attention or fp8 or graphs)
            try:
                with self.parked(eager) if copy_needed else contextlib.nullcontext():
                    network = self.lowprec_network(recipe, eager, attention, fp8, graphs) if copy_needed else eager
                    student.net, student.codecs["vae"] = network, decoder
                    self.generate(student, steps)  # warm-up: kernels' compilation, cuDNN's algorithm search
                    _, all_on = self.generate(student, steps)
            except Exception as exc:  # reported in the table
                log(f"{label} failed: {type(exc).__name__}: {exc}")
                rows.append((f"end to end: {label}", "all stages s", f"{off.total_seconds:.3f}", "failed"))
                continue
            finally:
                student.net, student.codecs["vae"] = eager, vae
                network = None  # the copy's memory goes before the next row's
            opts[label] = {"off": off.as_dict(), "on": all_on.as_dict()}
            log(f"\n#### {name}: {steps}-step student, {label}\n")
            log(all_on.table(per_stage=False))
            rows.append(
                (f"end to end: {label}", "all stages s", f"{off.total_seconds:.3f}", f"{all_on.total_seconds:.3f}")
            )

        log(f"\n#### {name}: speed options, off → on ({steps}-step student)\n")
        log("| option | measured | off | on |\n|---|---|---:|---:|")
        for row in rows:
            log("| " + " | ".join(row) + " |")
        out["option rows"] = rows
        self.results["models"][name] = out

    def big_decode(
        self, recipe: Any, base_vae: Any, size: tuple[int, int, int], variants: dict[str, Any], rows: list[Any]
    ) -> dict[str, Any]:
        """Each VAE variant decoding random latents of a ``size`` video: time and peak, or OOM."""
        from rcm_registry.profiling import StageProfiler

        size = (5, 32, 32) if self.smoke else size
        found: dict[str, Any] = {}
        for label, options in variants.items():
            codec = self.vae_codec(recipe, base_vae, **options)
            latents = torch.randn(1, *codec.latent_shape(*size), device=self.device)
            prof = StageProfiler(self.device)
            try:
                codec.decode(latents)  # warm-up, as above (and where it runs out of memory, it does so here)
                with prof.stage("vae decode"):
                    codec.decode(latents)
                found[label] = attrs.asdict(prof.stages[0])
            except torch.OutOfMemoryError:
                found[label] = "out of memory"
            del codec, latents
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        first, *rest = found
        where = "×".join(map(str, size))
        for label in rest:
            rows.append(
                (f"VAE decode {where}: {first} → {label}", "decode s / peak GiB", fmt(found[first]), fmt(found[label]))
            )
        return found


def stage(profiler: Any, prefix: str) -> Any:
    """The first stage whose name starts with ``prefix``."""
    return next(s for s in profiler.stages if s.name.startswith(prefix))


def fmt(stage: Any) -> str:
    if isinstance(stage, str):
        return stage
    if isinstance(stage, dict):
        seconds, peak = stage["seconds"], stage["peak_bytes"]
    else:
        seconds, peak = stage.seconds, stage.peak_bytes
    return f"{seconds:.3f}" + ("" if peak is None else f" / {peak / 1024**3:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny networks and codecs on the CPU (checks the script)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--student-steps", default="1,2,4")
    p.add_argument("--chunk-frames", type=int, default=4, help="decode_chunk_frames of the chunked VAE decode")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--json", type=Path, help="write every profile here")
    args = p.parse_args(argv)
    args.student_steps = [int(s) for s in args.student_steps.split(",")]
    if args.smoke:
        args.teacher_steps = min(args.teacher_steps, 3)
    elif not torch.cuda.is_available():
        p.error("needs a CUDA device (or --smoke)")
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model {', '.join(unknown)} (known: {', '.join(MODELS)})")
    bench = Bench(args)
    for name in names:
        bench.run_model(name, MODELS[name])
    if args.json:
        args.json.write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
