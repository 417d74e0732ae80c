"""``rcm generate``: a prompt in, a video (or image, or latents) out, from a trained run.

The run's output network (EMA weights when the run kept them) samples with the recipe's few-step sampler;
the recipe's ``codecs`` turn the prompt into the network's text condition and the latents into pixels.

What the codecs must do is in :mod:`rcm_registry.protocols`: ``codecs.text`` is a
:class:`~rcm_registry.protocols.TextEncoder`, ``codecs.vae`` a :class:`~rcm_registry.protocols.VideoCodec`
(the built-in ones are in ``rcm_plugins.data``).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from rcm_registry.atomic import atomic_file
from rcm_registry.errors import UserError
from rcm_registry.profiling import StageProfiler
from rcm_registry.protocols import close_dataset

if TYPE_CHECKING:
    from rcm_registry.engine.sampling import LoadedRun

#: Suffixes ``--out`` may have.
OUTPUTS = (".mp4", ".png", ".safetensors")


class _Counting(nn.Module):
    """The network, each evaluation timed as its own profiler stage (``transformer call N (step S)``)."""

    def __init__(self, net: nn.Module, profiler: StageProfiler) -> None:
        super().__init__()
        self.net = net
        self._profiler = profiler
        self.calls = 0
        #: The sampler's step the next call belongs to (advanced by ``SampleContext.on_step``).
        self.step = 1

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        with self._profiler.stage(f"transformer call {self.calls} (step {self.step})", "transformer"):
            return self.net(*args, **kwargs)


#: Negative-prompt embeddings already computed in this process, per text codec object and prompt: the
#: negative prompt rarely changes between generations, and a codec object holds fixed weights.
_NEGATIVE_CACHE: weakref.WeakKeyDictionary[Any, dict[str, Tensor]] = weakref.WeakKeyDictionary()


def encode_negative(codec: Any, prompt: str, *, cache: bool = True) -> tuple[Tensor, bool]:
    """The negative prompt's embedding from ``codec`` (the CFG null condition) and whether it came from the
    per-process cache (keyed by the codec object and the prompt)."""
    if cache:
        try:
            known = _NEGATIVE_CACHE.setdefault(codec, {})
        except TypeError:  # a codec that cannot be weakly referenced is encoded every time
            known = {}
        if prompt in known:
            return known[prompt], True
    with torch.no_grad():
        null, _ = codec.encode([prompt])
    if cache:
        known[prompt] = null
    return null, False


def compile_network(gen: LoadedRun, *, backend: str = "inductor", mode: str | None = None) -> None:
    """Replace ``gen.net`` by ``torch.compile`` of it (static shapes: a student's few calls share one shape).

    The first generation pays the compilation; ``mode='reduce-overhead'`` adds CUDA graphs on the GPU.
    """
    if gen.inference.cuda_graphs:
        raise UserError(
            "--compile with inference.cuda_graphs / --cuda-graphs: choose one (the compiler cannot trace the "
            "graph replay; --compile-mode reduce-overhead is the compiler's own CUDA graphs)"
        )
    try:
        gen.net = torch.compile(gen.net, backend=backend, mode=mode, dynamic=False)  # type: ignore[assignment]
    except (RuntimeError, ValueError) as exc:  # unknown backend or mode
        raise UserError(f"--compile: {exc}") from None


def latent_shape(
    gen: LoadedRun, shape: Sequence[int] | None, frames: int | None, height: int | None, width: int | None
) -> tuple[int, ...]:
    """``shape``, else the VAE's latent shape of ``frames × height × width``, else the training data's."""
    if shape is not None:
        if len(shape) != 4 or min(shape) < 1:
            raise UserError(f"--shape must be four positive sizes C,T,H,W, got {list(shape)}")
        return tuple(int(s) for s in shape)
    if frames is not None or height is not None or width is not None:
        if frames is None or height is None or width is None:
            raise UserError("--frames, --height and --width go together")
        vae = gen.codecs.get("vae")
        if vae is None:
            raise UserError("--frames/--height/--width need the recipe's codecs.vae; pass --shape C,T,H,W instead")
        return tuple(vae.latent_shape(frames, height, width))
    try:
        dataset = gen.dataset
    except UserError as exc:
        raise UserError(
            f"the latent shape comes from the training data, which cannot be opened here ({exc}); "
            "pass --shape C,T,H,W or --frames/--height/--width"
        ) from None
    shape_ = tuple(int(s) for s in dataset.sample_shape)
    close_dataset(dataset)
    return shape_


@attrs.define
class Generated:
    latents: Tensor  # (C, T, H, W)
    video: Tensor | None  # (3, T, H, W) in [−1, 1]
    seconds: float  # sampling wall time
    network_calls: int = 0  # transformer evaluations (CFG counts two per step)


#: How ``rcm generate`` takes the conditions besides the text (for the error when they are missing).
GENERATE_CONDITIONS = (
    "rcm generate",
    "Give them as tensors with one row, in --conditions FILE.safetensors (the format rcm synth reads, e.g. "
    "one row of a file made for it)",
)


def check_generation_conditions(role: str, spec: Any, shape: Sequence[int], given: Mapping[str, Tensor]) -> None:
    """Every condition besides the text that the network needs (Wan I2V, Cosmos V2W) given, none it does not
    take, shapes fitting ``shape``: else one :class:`UserError` naming them all."""
    from rcm_registry.conditions import check_conditions, network_conditions

    check_conditions(role, spec, network_conditions(spec, shape), given, GENERATE_CONDITIONS)


def generate(
    gen: LoadedRun,
    prompt: str,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    conditions: Mapping[str, Tensor] | None = None,
    decode: bool = True,
    progress: Any = None,
    profiler: StageProfiler | None = None,
    cache_negative: bool = True,
    offload_text_encoder: bool = False,
) -> Generated:
    """Sample one video for ``prompt`` with the recipe's sampler (``steps`` overriding its step count).

    ``conditions`` are the network's inputs besides the text, one row each (``cond.NAME`` of a
    ``--conditions`` file); they go to both CFG branches, as in training and ``rcm synth``.

    ``profiler`` times each stage (text encoding, every network call, the decode); ``cache_negative`` reuses
    the negative prompt's embedding from earlier calls in this process; ``offload_text_encoder`` moves the
    text encoder to the CPU after encoding (and back before the next encoding), freeing its device memory
    for the transformer and the VAE. None of them changes the result.
    """
    from rcm_registry.conditions import conditions_on
    from rcm_registry.engine.context import SampleContext
    from rcm_registry.engine.sampling import sampler_with_steps
    from rcm_registry.engine.trainer import autocast

    prof = profiler or StageProfiler(gen.device, enabled=False)
    text_codec = gen.codecs.get("text")
    if text_codec is None:
        raise UserError(
            "the run's recipe has no codecs.text to encode the prompt: pass e.g. "
            "--set 'codecs.text={use: umt5, path: /models/text_encoder}'"
        )
    conditions = dict(conditions or {})
    check_generation_conditions(gen.role, gen.recipe.networks[gen.role].spec, shape, conditions)
    if decode and "vae" not in gen.codecs:
        raise UserError(
            "the run's recipe has no codecs.vae to decode the latents: pass --latents-only (and a .safetensors "
            "--out) or e.g. --set 'codecs.vae={use: wan_vae, path: /models/vae}'"
        )
    sampler = sampler_with_steps(gen, steps)
    if offload_text_encoder:
        with prof.stage("text encoder to device", "text encoder offload"):
            text_codec.to(gen.device)
    with prof.stage("text encoding (prompt)", "text encoding"), torch.no_grad():
        text, _ = text_codec.encode([prompt])
    with prof.stage("text encoding (negative prompt)", "text encoding"):
        null, cached = encode_negative(text_codec, negative_prompt, cache=cache_negative)
    if cached and prof.stages:
        prof.stages[-1] = attrs.evolve(prof.stages[-1], name="text encoding (negative prompt, cached)")
    if offload_text_encoder:
        with prof.stage("text encoder to cpu", "text encoder offload"):
            text_codec.to("cpu")
            if gen.device.type == "cuda":
                torch.cuda.empty_cache()

    counting = _Counting(gen.net, prof)

    def on_step() -> None:
        if progress is not None:
            progress.update(min(counting.step, progress.total), {})
        counting.step += 1

    extra = conditions_on(gen.device, conditions)
    ctx = SampleContext(
        net=counting,
        shape=(1, *shape),
        condition={"text": text.to(gen.device), **extra},
        generator=torch.Generator(device=gen.device).manual_seed(seed),
        null_condition={"text": null.to(gen.device), **extra},
        schedule=gen.schedule,
        teacher=gen.teacher,
        device=gen.device,
        on_step=on_step,
    )
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(gen.device, gen.recipe.body.run.precision):  # as the network was trained
        latents = sampler(ctx).float()
    if gen.device.type == "cuda":
        torch.cuda.synchronize(gen.device)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    video = None
    if decode:
        with prof.stage("vae decode"):
            video = gen.codecs["vae"].decode(latents).cpu()[0]
    return Generated(latents=latents.cpu()[0], video=video, seconds=seconds, network_calls=counting.calls)


# -- writing ----------------------------------------------------------------------------------------


def to_frames(video: Tensor) -> np.ndarray:
    """(3, T, H, W) in [−1, 1] → (T, H, W, 3) uint8."""
    pixels = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).numpy()


def contact_sheet(frames: np.ndarray) -> np.ndarray:
    """All frames in a near-square grid (one picture for a short clip); a single frame as it is."""
    t, h, w, c = frames.shape
    if t == 1:
        return frames[0]
    cols = math.ceil(math.sqrt(t))
    rows = math.ceil(t / cols)
    sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, col = divmod(i, cols)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = frame
    return sheet


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


#: What ``rcm generate --out FILE.mp4`` needs, and the extras of pyproject.toml that bring it.
VIDEO_WRITER = 'imageio with its ffmpeg plugin (pip install -e ".[wan]" or ".[cosmos]", or imageio[ffmpeg])'


def check_video_writer(out: Path) -> None:
    """A UserError naming the extra to install when imageio or its ffmpeg plugin is missing (before sampling)."""
    import importlib.util

    missing = [name for name in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--out {out}: writing MP4 needs {VIDEO_WRITER}; not installed: {', '.join(missing)}")


def save_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """(T, H, W, 3) uint8 frames as an H.264 MP4 through imageio's ffmpeg plugin (see :func:`check_video_writer`)."""
    import imageio.v3 as iio

    with atomic_file(path) as tmp:
        iio.imwrite(tmp, frames, fps=fps, extension=".mp4", plugin="FFMPEG")


def save_latents(latents: Tensor, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({"latents": latents.contiguous()}, str(tmp), metadata=metadata)
