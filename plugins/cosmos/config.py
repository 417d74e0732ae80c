"""Recipe schema of the Cosmos-Predict2 network components and the factory they share."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from rcm_plugins.cosmos import checkpoint
from rcm_plugins.cosmos.model import CosmosArch, CosmosNetwork

from rcm_registry import schema
from rcm_registry.errors import CheckpointError
from rcm_registry.schema import ComponentSpec

Size = Literal["2B", "14B", "tiny"]

# Published hyper-parameters: diffusers' scripts/convert_cosmos_to_diffusers.py, TRANSFORMER_CONFIGS
# "Cosmos-2.0-Diffusion-{2B,14B}-{Text2Image,Video2World}" (heads × head dim 16 × 128 / 40 × 128, 28 / 36
# blocks, MLP ratio 4, T5 width 1024, AdaLN-LoRA rank 256, max size (128, 240, 240), patch (1, 2, 2),
# padding-mask channel on, no learnable position embedding), which match the original's
# cosmos_predict2/configs/base/config_{text2image,video2world}.py; the RoPE extrapolation ratios (t, h, w)
# differ by model and are listed separately.
_BACKBONES: dict[str, dict[str, Any]] = {
    "2B": {"num_heads": 16, "head_dim": 128, "num_layers": 28},
    "14B": {"num_heads": 40, "head_dim": 128, "num_layers": 36},
    # For tests and CI: every code path of the real sizes, in milliseconds on a CPU.
    "tiny": {"num_heads": 2, "head_dim": 16, "num_layers": 2, "text_dim": 24, "adaln_lora_dim": 8},
}
_ROPE_SCALE: dict[tuple[str, bool], tuple[float, float, float]] = {
    ("2B", False): (1.0, 4.0, 4.0),
    ("14B", False): (1.0, 4.0, 4.0),
    ("tiny", False): (1.0, 4.0, 4.0),
    ("2B", True): (1.0, 3.0, 3.0),
    ("14B", True): (20 / 24, 2.0, 2.0),
    ("tiny", True): (1.0, 3.0, 3.0),
}
#: Cosmos2VideoToWorldPipeline's default frame rate (diffusers); Text2Image uses no fps (images).
V2W_FPS = 16.0


def preset(size: str, *, v2w: bool) -> dict[str, Any]:
    """Architecture fields of a named size."""
    return {**_BACKBONES[size], "rope_scale": _ROPE_SCALE[size, v2w], "condition_mask": v2w}


@attrs.define
class CosmosWeights:
    """Where the weights come from. ``format: auto`` tells diffusers and native layouts apart."""

    path: str
    format: Literal["auto", "native", "diffusers"] = "auto"


_REQUIRED = ("num_heads", "head_dim", "num_layers")


def _optional_positive() -> Any:
    return attrs.field(default=None, validator=schema.positive)


@attrs.define(kw_only=True)
class CosmosT2IConfig:
    """A Cosmos-Predict2 network: a ``size`` (or the weights' config.json) plus optional overrides."""

    size: Size | None = None
    num_heads: int | None = _optional_positive()
    head_dim: int | None = _optional_positive()
    num_layers: int | None = _optional_positive()
    in_channels: int | None = _optional_positive()
    out_channels: int | None = _optional_positive()
    mlp_ratio: float | None = _optional_positive()
    text_dim: int | None = _optional_positive()
    adaln_lora_dim: int | None = _optional_positive()
    max_size: tuple[int, int, int] | None = _optional_positive()
    patch_size: tuple[int, int, int] | None = _optional_positive()
    #: RoPE extrapolation ratios (time, height, width).
    rope_scale: tuple[float, float, float] | None = _optional_positive()
    concat_padding_mask: bool | None = None
    learnable_pos_embed: bool | None = None
    qk_norm_eps: float | None = _optional_positive()
    #: Frame rate for the temporal RoPE positions when a call passes none (None: unscaled, as for images).
    fps: float | None = _optional_positive()
    #: The attention backend every attention of the network calls.
    attention: ComponentSpec = schema.component(  # noqa: RUF009 (returns an attrs.field)
        "attention", default={"use": "sdpa"}
    )
    weights: CosmosWeights | None = None
    #: Recompute each block in the backward pass (saves activation memory when training).
    activation_checkpointing: bool = False

    def __attrs_post_init__(self) -> None:
        if self.size is None and self.weights is None:
            absent = [f for f in _REQUIRED if getattr(self, f) is None]
            if absent:
                raise ValueError(
                    "give `size` (2B, 14B, tiny), `weights` (a checkpoint with config.json), or all of "
                    f"{', '.join(_REQUIRED)} (missing: {', '.join(absent)})"
                )
        if self.head_dim is not None and (self.head_dim % 2 or self.head_dim < 12):
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 12 (3-D RoPE)")

    v2w = False
    default_fps = None

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """Per-sample shapes of the conditions besides ``text`` (``rcm synth`` checks it can give them)."""
        return {}


@attrs.define(kw_only=True)
class CosmosV2WConfig(CosmosT2IConfig):
    """A Cosmos-Predict2 Video2World network (condition-mask channel, per-frame timesteps, 16 fps default)."""

    v2w = True
    default_fps = V2W_FPS

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """``condition_latents``: clean latents, read on the conditioning frames; ``condition_mask``: 1 on
        those frames (see the ``cosmos_edm`` teacher)."""
        return {"condition_latents": tuple(latent_shape), "condition_mask": (1, *latent_shape[1:])}


_ARCH_FIELDS = tuple(f.name for f in attrs.fields(CosmosArch))


def resolve_arch(config: CosmosT2IConfig) -> CosmosArch:
    """The architecture: ``size`` preset, else the weights' config.json, else the fields; fields override."""
    base: dict[str, Any] = {"condition_mask": config.v2w}
    if config.size is not None:
        base.update(preset(config.size, v2w=config.v2w))
    elif config.weights is not None and not _fully_specified(config):
        found = checkpoint.arch_from_checkpoint(config.weights.path, config.weights.format, v2w=config.v2w)
        base.update({f: getattr(found, f) for f in _ARCH_FIELDS})
    overrides = {f: getattr(config, f) for f in _ARCH_FIELDS if getattr(config, f, None) is not None}
    try:
        return CosmosArch(**{**base, **overrides})
    except ValueError as exc:
        raise ValueError(f"inconsistent architecture: {exc}") from exc


def _fully_specified(config: CosmosT2IConfig) -> bool:
    return all(getattr(config, f) is not None for f in _REQUIRED)


def build(config: CosmosT2IConfig) -> CosmosNetwork:
    """Build the network; with weights, on the meta device first so the parameters are allocated once."""
    arch = resolve_arch(config)
    from_file = config.weights is not None and config.size is None and not _fully_specified(config)
    if from_file:
        _check_kind(config)
    attention = config.attention.build()
    options = {
        "fps": config.fps if config.fps is not None else config.default_fps,
        "activation_checkpointing": config.activation_checkpointing,
    }
    if config.weights is None:
        return CosmosNetwork(arch, attention, **options)
    with torch.device("meta"):
        net = CosmosNetwork(arch, attention, **options)
    checkpoint.load_weights(net, config.weights.path, config.weights.format, assign=True)
    return net


def _check_kind(config: CosmosT2IConfig) -> None:
    """A diffusers config tells T2I from V2W by its channel count; refuse to build the other kind."""
    assert config.weights is not None
    found = checkpoint.arch_from_checkpoint(config.weights.path, config.weights.format)
    if found.v2w != config.v2w:
        want, other = ("cosmos-predict2-v2w", "cosmos-predict2-t2i")
        if not config.v2w:
            want, other = other, want
        raise CheckpointError(f"{config.weights.path}: this is a checkpoint for {other}, not {want}")
