"""Recipe schema of the Wan2.1 network components and the factory they share."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from rcm_plugins.wan import checkpoint
from rcm_plugins.wan.model import WanArch, WanNetwork

from rcm_registry import schema
from rcm_registry.errors import CheckpointError
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


@attrs.define
class WanWeights:
    """Where the weights come from. ``format: auto`` tells diffusers and native layouts apart."""

    path: str
    format: Literal["auto", "native", "diffusers"] = "auto"


_REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers")


def _optional_positive() -> Any:
    return attrs.field(default=None, validator=schema.positive)


@attrs.define(kw_only=True)
class WanT2VConfig:
    """A Wan2.1 network: a ``size`` (or the weights' config.json) plus optional overrides of any field."""

    size: Size | None = None
    dim: int | None = _optional_positive()
    ffn_dim: int | None = _optional_positive()
    num_heads: int | None = _optional_positive()
    num_layers: int | None = _optional_positive()
    in_channels: int | None = _optional_positive()
    out_channels: int | None = _optional_positive()
    text_dim: int | None = _optional_positive()
    freq_dim: int | None = _optional_positive()
    patch_size: tuple[int, int, int] | None = _optional_positive()
    eps: float | None = _optional_positive()
    cross_attn_norm: bool | None = None
    #: The attention backend every attention of the network calls.
    attention: ComponentSpec = schema.component(  # noqa: RUF009 (returns an attrs.field)
        "attention", default={"use": "sdpa"}
    )
    weights: WanWeights | None = None
    #: Recompute each block in the backward pass (saves activation memory when training).
    activation_checkpointing: bool = False

    def __attrs_post_init__(self) -> None:
        if self.size is None and self.weights is None:
            absent = [f for f in _REQUIRED if getattr(self, f) is None]
            if absent:
                raise ValueError(
                    "give `size` (1.3B, 14B, tiny), `weights` (a checkpoint with config.json), or all of "
                    f"{', '.join(_REQUIRED)} (missing: {', '.join(absent)})"
                )
        if self.dim is not None and self.num_heads is not None and self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.freq_dim is not None and self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even")

    i2v = False

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
    image_dim: int | None = _optional_positive()

    i2v = True

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """``image``: CLIP image tokens (any number of them); ``image_latent``: the conditioning latents
        (4 mask channels and the encoded first frame, as Wan's I2V pipeline builds them)."""
        arch = resolve_arch(self)
        channels, *rest = latent_shape
        return {"image": (None, arch.image_dim), "image_latent": (arch.in_channels - channels, *rest)}


_ARCH_FIELDS = tuple(f.name for f in attrs.fields(WanArch))


def resolve_arch(config: WanT2VConfig) -> WanArch:
    """The architecture: ``size`` preset, else the weights' config.json, else the fields; fields override."""
    i2v = config.i2v
    base: dict[str, Any] = {"image_dim": 1280, "in_channels": 36} if i2v else {}
    if config.size is not None:
        base.update(preset(config.size, i2v=i2v))
    elif config.weights is not None and not _fully_specified(config):
        found = checkpoint.arch_from_checkpoint(config.weights.path, config.weights.format)
        base.update({f: getattr(found, f) for f in _ARCH_FIELDS})
    overrides = {f: getattr(config, f) for f in _ARCH_FIELDS if getattr(config, f, None) is not None}
    fields = {**base, **overrides}
    if not i2v:
        fields["image_dim"] = None
    return WanArch(**fields)


def _fully_specified(config: WanT2VConfig) -> bool:
    return all(getattr(config, f) is not None for f in _REQUIRED)


def build(config: WanT2VConfig) -> WanNetwork:
    """Build the network; with weights, on the meta device first so the parameters are allocated once."""
    arch = resolve_arch(config)
    from_file = config.weights is not None and config.size is None and not _fully_specified(config)
    if from_file and config.i2v != _checkpoint_is_i2v(config):
        want, other = ("wan2.1-i2v", "wan2.1-t2v") if config.i2v else ("wan2.1-t2v", "wan2.1-i2v")
        raise CheckpointError(f"{config.weights.path}: this is a checkpoint for {other}, not {want}")
    attention = config.attention.build()
    options = {"activation_checkpointing": config.activation_checkpointing}
    if config.weights is None:
        return WanNetwork(arch, attention, **options)
    with torch.device("meta"):
        net = WanNetwork(arch, attention, **options)
    checkpoint.load_weights(net, config.weights.path, config.weights.format, assign=True)
    return net


def _checkpoint_is_i2v(config: WanT2VConfig) -> bool:
    assert config.weights is not None
    return checkpoint.arch_from_checkpoint(config.weights.path, config.weights.format).i2v
