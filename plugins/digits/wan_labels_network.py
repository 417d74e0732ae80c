"""``wan2.1-labels``: a Wan2.1 transformer whose text condition is a learned embedding of a class label."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.common.network_config import latent_input
from rcm_plugins.wan.config import Size, WanT2VConfig, build, resolve_arch
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import InputSpec, NetworkInputs
from rcm_registry.schema import ComponentSpec


def _optional_positive() -> int | None:
    return attrs.field(default=None, validator=schema.positive)


def _check_extra_labels(instance: object, attribute: attrs.Attribute, value: dict[str, int]) -> None:
    for key, size in value.items():
        if key in ("label", "text"):
            raise ValueError(f"{key!r} is not an extra label: `label` is always there and `text` is Wan's own")
        if size < 1:
            raise ValueError(f"{key}: the number of values must be >= 1, got {size}")


@attrs.define(kw_only=True)
class WanLabelsConfig:
    """The Wan2.1 architecture fields (a ``size`` preset and/or explicit ones) plus the label embedding.

    There is no ``weights`` field of its own: the engine's ``weights: {path: RUN_DIR}`` loads a trained
    run (both the transformer and the label embedding).
    """

    size: Size | None = None
    dim: int | None = _optional_positive()
    ffn_dim: int | None = _optional_positive()
    num_heads: int | None = _optional_positive()
    num_layers: int | None = _optional_positive()
    in_channels: int = attrs.field(default=1, validator=schema.positive)
    out_channels: int = attrs.field(default=1, validator=schema.positive)
    text_dim: int | None = _optional_positive()
    freq_dim: int | None = _optional_positive()
    patch_size: tuple[int, int, int] | None = _optional_positive()
    attention: ComponentSpec = schema.component("attention", default={"use": "sdpa"})  # noqa: RUF009
    activation_checkpointing: bool = False
    fused_ops: bool = True
    #: Labels 0..num_classes−1; label num_classes is the null label of classifier-free guidance.
    num_classes: int = attrs.field(default=10, validator=schema.positive)
    #: Length L of the token sequence each label becomes (the cross-attention keys).
    label_tokens: int = attrs.field(default=4, validator=schema.positive)
    #: More label-valued conditions, condition key → number of values (e.g. ``{direction: 8}``): each adds
    #: ``label_tokens`` tokens from its own embedding, after the label's; its null value is that number.
    extra_labels: dict[str, int] = attrs.field(factory=dict, validator=_check_extra_labels)

    def label_vocabulary(self) -> dict[str, int]:
        """Condition key → number of values, in token order (the data must give exactly these keys)."""
        return {"label": self.num_classes, **self.extra_labels}

    def network_inputs(self) -> NetworkInputs:
        """The Wan latents and, instead of text, the labels: the data must give exactly these keys (a label
        it never gives would only ever be its null value)."""
        wan = resolve_arch(self.wan_config())
        labels = {key: InputSpec(shape=(), names=(), classes=size) for key, size in self.label_vocabulary().items()}
        return NetworkInputs(
            x=latent_input(wan.in_channels, wan.patch_size),
            condition=labels,
            head_dim=wan.head_dim,
            attention=self.attention,
            heads=wan.num_heads,
            width=wan.dim,
        )

    def parameter_count(self) -> int:
        """The Wan transformer's parameters (meta device) and the label embeddings'."""
        wan = self.wan_config()
        width = self.label_tokens * resolve_arch(wan).text_dim
        return wan.parameter_count() + sum((n + 1) * width for n in self.label_vocabulary().values())

    def wan_config(self) -> WanT2VConfig:
        fields = ("size", "dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels")
        more = ("text_dim", "freq_dim", "patch_size", "attention", "activation_checkpointing", "fused_ops")
        return WanT2VConfig(**{f: getattr(self, f) for f in fields + more})

    def __attrs_post_init__(self) -> None:
        self.wan_config()  # the Wan config's own checks (size or all of dim/ffn_dim/heads/layers, ...)


class WanLabels(nn.Module):
    """Wan2.1 conditioned on a class label through its cross-attention path.

    ``text = E[label]`` reshaped to (B, label_tokens, text_dim), with E an ``nn.Embedding`` of
    num_classes + 1 rows (the last one is the null label); ``forward(x, timestep, label=None)`` then
    returns ``wan(x, timestep, text=text)``. A missing label means the null label. Each of the
    ``extra_labels`` (keyword arguments of forward, e.g. ``direction=``) has an embedding of its own whose
    tokens follow the label's; a missing one is its null value. The embeddings are plain lookups of
    trained weights, so forward-mode AD through x and timestep works as it does for Wan.
    """

    def __init__(self, config: WanLabelsConfig) -> None:
        super().__init__()
        self.config = config
        self.wan = build(config.wan_config())
        self.text_dim = self.wan.arch.text_dim
        width = config.label_tokens * self.text_dim
        self.label_embedding = nn.Embedding(config.num_classes + 1, width)
        # Only built when configured, so networks without extra labels keep the state dict they always had.
        self.extra_embeddings = nn.ModuleDict({k: nn.Embedding(n + 1, width) for k, n in config.extra_labels.items()})

    def forward(self, x: Tensor, timestep: Tensor, label: Tensor | None = None, **extra: Tensor) -> Tensor:
        unknown = sorted(set(extra) - set(self.config.extra_labels))
        if unknown:
            known = ", ".join(["label", *self.config.extra_labels])
            raise ValueError(f"unexpected condition {', '.join(unknown)} (this network takes {known})")
        tokens = [self._tokens("label", label, self.label_embedding, self.config.num_classes, x)]
        for key, size in self.config.extra_labels.items():
            tokens.append(self._tokens(key, extra.get(key), self.extra_embeddings[key], size, x))
        return self.wan(x, timestep, text=torch.cat(tokens, dim=1))

    def _tokens(self, key: str, value: Tensor | None, embedding: nn.Embedding, null: int, x: Tensor) -> Tensor:
        """(B, label_tokens, text_dim) tokens of one label; a missing one is the null value."""
        if value is None:
            value = x.new_full((x.shape[0],), null, dtype=torch.long)
        if value.shape != (x.shape[0],):
            raise ValueError(f"{key} must have shape ({x.shape[0]},), got {tuple(value.shape)}")
        return embedding(value.to(x.device)).unflatten(1, (self.config.label_tokens, self.text_dim))

    def extra_repr(self) -> str:
        extra = f", extra_labels={self.config.extra_labels}" if self.config.extra_labels else ""
        return f"num_classes={self.config.num_classes}, label_tokens={self.config.label_tokens}{extra}"


def wan_labels(config: WanLabelsConfig) -> WanLabels:
    """Wan2.1 transformer with a learned label embedding as its text condition (class-conditional images)."""
    return WanLabels(config)


COMPONENT = rr.Component(
    kind="network", name="wan2.1-labels", factory=wan_labels, config=WanLabelsConfig, provides={"jvp"}
)
