"""Recipe schema of the Wan2.1 network components and the factory they share."""

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
from rcm_plugins.wan import checkpoint
from rcm_plugins.wan.model import WanArch, WanNetwork

from rcm_registry import schema
from rcm_registry.protocols import InputSpec, NetworkInputs
from rcm_registry.schema import ComponentSpec

Size = Literal["1.3B", "14B", "tiny"]

# Published hyper-parameters: Wan2.1 repository, wan/configs/wan_t2v_1_3B.py, wan_t2v_14B.py and
# wan_i2v_14B.py (dim, ffn_dim, freq_dim 256, num_heads, num_layers, eps 1e-6, patch (1, 2, 2), qk_norm
# and cross_attn_norm on); text_dim 4096 (umT5-XXL), I2V: 36 input channels (16 noisy + 4 mask + 16 image
# latents) and CLIP ViT-H/14 tokens of width 1280, as in diffusers' Wan conversion script.
_BACKBONES: dict[str, dict[str, Any]] = {
    "1.3B": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
    "14B": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
    # For tests and CI: every code path of the real sizes, in milliseconds on a CPU.
    "tiny": {"dim": 64, "ffn_dim": 96, "num_heads": 4, "num_layers": 2, "text_dim": 32, "freq_dim": 32},
}
_I2V_EXTRA: dict[str, dict[str, Any]] = {
    # Wan2.1 publishes I2V at 14B only; "1.3B" is the T2V-1.3B backbone with the I2V conditioning layers.
    "1.3B": {"in_channels": 36, "image_dim": 1280},
    "14B": {"in_channels": 36, "image_dim": 1280},
    "tiny": {"in_channels": 36, "image_dim": 24},
}


def preset(size: str, *, i2v: bool) -> dict[str, Any]:
    """Architecture fields of a named size."""
    return {**_BACKBONES[size], **(_I2V_EXTRA[size] if i2v else {})}


#: Where the weights come from (the same for every network family).
WanWeights = CheckpointWeights

#: Architecture fields that, all given, describe the network without a size or weights.
REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers")


@attrs.define(kw_only=True)
class WanFields:
    """What every Wan network config has besides its ``size``: optional overrides of any architecture field,
    the attention backend, the weights, activation checkpointing (Wan2.1's and Wan2.2's networks alike)."""

    dim: int | None = optional_positive()
    ffn_dim: int | None = optional_positive()
    num_heads: int | None = optional_positive()
    num_layers: int | None = optional_positive()
    in_channels: int | None = optional_positive()
    out_channels: int | None = optional_positive()
    text_dim: int | None = optional_positive()
    freq_dim: int | None = optional_positive()
    patch_size: tuple[int, int, int] | None = optional_positive()
    eps: float | None = optional_positive()
    cross_attn_norm: bool | None = None
    #: The attention backend every attention of the network calls.
    attention: ComponentSpec = schema.component(  # noqa: RUF009 (returns an attrs.field)
        "attention", default={"use": "sdpa"}
    )
    weights: WanWeights | None = None
    #: Recompute each block in the backward pass (saves activation memory when training).
    activation_checkpointing: bool = False
    #: The fused Triton token ops on CUDA; false runs their plain-torch references (eager forward-mode AD
    #: through every op: the bf16 JVP study's comparison, benchmarks/jvp_precision.md).
    fused_ops: bool = True

    def network_options(self) -> dict[str, bool]:
        """The keyword options every Wan network class takes besides its architecture and attention."""
        return {"activation_checkpointing": self.activation_checkpointing, "fused_ops": self.fused_ops}

    def check_fields(self, sizes: tuple[str, ...]) -> None:
        """The architecture has a source (a size of ``sizes``, weights or every required field) and the
        fields given agree with each other."""
        check_architecture_source(self, REQUIRED, sizes)  # type: ignore[arg-type]
        if self.dim is not None and self.num_heads is not None and self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.freq_dim is not None and self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even")

    def architecture(self) -> WanArch:
        """The architecture of one transformer (of each expert), from the size, the weights' config.json or
        the fields."""
        raise NotImplementedError

    def transformers(self) -> int:
        """How many transformers of :meth:`architecture` the network holds (two experts: 2)."""
        return 1

    def network_inputs(self) -> NetworkInputs:
        """What the network takes (recipe validation checks the data and codecs against it): latents of
        ``in_channels`` (the noisy part, when conditioning latents ride along as ``image_latent``), ``text``
        of ``text_dim``, CLIP ``image`` tokens for Wan2.1 I2V."""
        check_checkpoint_path(self.weights)
        arch = self.architecture()
        extra = arch.in_channels - arch.out_channels
        condition = {"text": token_input(arch.text_dim), **self.extra_inputs(arch)}
        if arch.image_dim is not None:
            condition["image"] = token_input(arch.image_dim, width_name="image_dim")
        if extra > 0:  # mask and image latents, concatenated to x along channels by the network
            condition["image_latent"] = latent_input(extra, arch.patch_size, channel_name="in_channels - out_channels")
        x_channels = arch.out_channels if extra > 0 else arch.in_channels
        return NetworkInputs(
            x=latent_input(x_channels, arch.patch_size, channel_name="in_channels" if extra <= 0 else "out_channels"),
            condition=condition,
            head_dim=arch.head_dim,
            attention=self.attention,
            heads=arch.num_heads,
            width=arch.dim,
        )

    def extra_inputs(self, arch: WanArch) -> dict[str, InputSpec]:
        """Conditions a network of the family takes besides text and the I2V ones."""
        return {}

    def parameter_count(self) -> int:
        """Parameters of the network, counted on the meta device."""
        arch = self.architecture()
        return self.transformers() * meta_parameter_count(lambda: WanNetwork(arch, None))


@attrs.define(kw_only=True)
class WanT2VConfig(WanFields):
    """A Wan2.1 network: a ``size`` (or the weights' config.json) plus optional overrides of any field."""

    size: Size | None = None

    def __attrs_post_init__(self) -> None:
        self.check_fields(get_args(Size))

    i2v = False

    def architecture(self) -> WanArch:
        return resolve_arch(self)

    def attention_heads(self) -> int:
        """Heads of every attention (context parallel must divide it); read from config.json with weights."""
        return resolve_arch(self).num_heads

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """Per-sample shapes of the conditions besides ``text`` (``rcm synth`` checks it can give them)."""
        return {}


@attrs.define(kw_only=True)
class WanI2VConfig(WanT2VConfig):
    """A Wan2.1 image-to-video network (text and CLIP image tokens, conditioning latents in the input)."""

    #: Width of the CLIP image tokens.
    image_dim: int | None = optional_positive()

    i2v = True

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """``image``: CLIP image tokens (any number of them); ``image_latent``: the conditioning latents
        (4 mask channels and the encoded first frame, as Wan's I2V pipeline builds them)."""
        arch = resolve_arch(self)
        channels, *rest = latent_shape
        return {"image": (None, arch.image_dim), "image_latent": (arch.in_channels - channels, *rest)}


def resolve_arch(config: WanT2VConfig) -> WanArch:
    """The architecture: ``size`` preset, else the weights' config.json, else the fields; fields override."""
    i2v = config.i2v
    fields = arch_fields(
        config,
        WanArch,
        REQUIRED,
        defaults={"image_dim": 1280, "in_channels": 36} if i2v else {},
        preset=lambda size: preset(size, i2v=i2v),
        from_weights=lambda weights: checkpoint.arch_from_checkpoint(weights.path, weights.format),
    )
    if not i2v:
        fields["image_dim"] = None
    return WanArch(**fields)


def build(config: WanT2VConfig) -> WanNetwork:
    """Build the network; with weights, on the meta device first so the parameters are allocated once."""
    arch = resolve_arch(config)
    check_weights_kind(
        config,
        REQUIRED,
        wanted=config.i2v,
        found=lambda weights: checkpoint.arch_from_checkpoint(weights.path, weights.format).i2v,
        names=("wan2.1-t2v", "wan2.1-i2v"),
    )
    attention = config.attention.build()
    return build_network(
        lambda: WanNetwork(arch, attention, **config.network_options()),
        config.weights,
        checkpoint.load_weights,
    )
