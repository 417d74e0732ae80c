"""Recipe schema of the Cosmos-Predict2 network components and the factory they share."""

from __future__ import annotations

from typing import Any, Literal, get_args

import attrs
from rcm_plugins.common.network_config import (
    CheckpointWeights,
    arch_fields,
    build_network,
    check_architecture_source,
    check_checkpoint_path,
    check_weights_kind,
    latent_input,
    meta_parameter_count,
    optional_positive,
    token_input,
)
from rcm_plugins.cosmos import checkpoint
from rcm_plugins.cosmos.model import CosmosArch, CosmosNetwork

from rcm_registry import schema
from rcm_registry.protocols import InputSpec, NetworkInputs
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


#: Where the weights come from (the same for every network family).
CosmosWeights = CheckpointWeights

_REQUIRED = ("num_heads", "head_dim", "num_layers")


@attrs.define(kw_only=True)
class CosmosT2IConfig:
    """A Cosmos-Predict2 network: a ``size`` (or the weights' config.json) plus optional overrides."""

    size: Size | None = None
    num_heads: int | None = optional_positive()
    head_dim: int | None = optional_positive()
    num_layers: int | None = optional_positive()
    in_channels: int | None = optional_positive()
    out_channels: int | None = optional_positive()
    mlp_ratio: float | None = optional_positive()
    text_dim: int | None = optional_positive()
    adaln_lora_dim: int | None = optional_positive()
    max_size: tuple[int, int, int] | None = optional_positive()
    patch_size: tuple[int, int, int] | None = optional_positive()
    #: RoPE extrapolation ratios (time, height, width).
    rope_scale: tuple[float, float, float] | None = optional_positive()
    concat_padding_mask: bool | None = None
    learnable_pos_embed: bool | None = None
    qk_norm_eps: float | None = optional_positive()
    #: Frame rate for the temporal RoPE positions when a call passes none (None: unscaled, as for images).
    fps: float | None = optional_positive()
    #: The attention backend every attention of the network calls.
    attention: ComponentSpec = schema.component(  # noqa: RUF009 (returns an attrs.field)
        "attention", default={"use": "sdpa"}
    )
    weights: CosmosWeights | None = None
    #: Recompute each block in the backward pass (saves activation memory when training).
    activation_checkpointing: bool = False

    def __attrs_post_init__(self) -> None:
        check_architecture_source(self, _REQUIRED, get_args(Size))
        if self.head_dim is not None and (self.head_dim % 2 or self.head_dim < 12):
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 12 (3-D RoPE)")

    v2w = False
    default_fps = None

    def network_inputs(self) -> NetworkInputs:
        """What the network takes (recipe validation checks the data and codecs against it): latents of
        ``in_channels``, ``text`` of ``text_dim``; Video2World also the conditioning latents and mask."""
        check_checkpoint_path(self.weights)
        arch = resolve_arch(self)
        condition = {"text": token_input(arch.text_dim)}
        if self.v2w:
            condition["condition_latents"] = latent_input(arch.in_channels, arch.patch_size)
            condition["condition_mask"] = InputSpec(
                shape=(1, None, None, None), names=("mask channels", "T", "H", "W"), multiple_of=(1, *arch.patch_size)
            )
        return NetworkInputs(
            x=latent_input(arch.in_channels, arch.patch_size),
            condition=condition,
            closed=False,  # the teacher wrapper reads conditions of its own (cosmos_edm: condition_latents)
            head_dim=arch.head_dim,
            attention=self.attention,
            heads=arch.num_heads,
            width=arch.dim,
        )

    def parameter_count(self) -> int:
        """Parameters of the network, counted on the meta device."""
        arch = resolve_arch(self)
        return meta_parameter_count(lambda: CosmosNetwork(arch, None))

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


def resolve_arch(config: CosmosT2IConfig) -> CosmosArch:
    """The architecture: ``size`` preset, else the weights' config.json, else the fields; fields override."""
    v2w = config.v2w
    fields = arch_fields(
        config,
        CosmosArch,
        _REQUIRED,
        defaults={"condition_mask": v2w},
        preset=lambda size: preset(size, v2w=v2w),
        from_weights=lambda weights: checkpoint.arch_from_checkpoint(weights.path, weights.format, v2w=v2w),
    )
    try:
        return CosmosArch(**fields)
    except ValueError as exc:
        raise ValueError(f"inconsistent architecture: {exc}") from exc


def build(config: CosmosT2IConfig) -> CosmosNetwork:
    """Build the network; with weights, on the meta device first so the parameters are allocated once."""
    arch = resolve_arch(config)
    check_weights_kind(
        config,
        _REQUIRED,
        wanted=config.v2w,
        # A diffusers config tells T2I from V2W by its channel count (read here without a v2w hint).
        found=lambda weights: checkpoint.arch_from_checkpoint(weights.path, weights.format).v2w,
        names=("cosmos-predict2-t2i", "cosmos-predict2-v2w"),
    )
    attention = config.attention.build()
    fps = config.fps if config.fps is not None else config.default_fps
    return build_network(
        lambda: CosmosNetwork(arch, attention, fps=fps, activation_checkpointing=config.activation_checkpointing),
        config.weights,
        checkpoint.load_weights,
    )
