"""``random_latents``: deterministic random video/image latents with random text embeddings.

For smoke tests, CI recipes and benchmarks of the large networks: it exercises every tensor shape of a real
latent dataset without any data on disk. Nothing in it is learnable structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.protocols import Batch, Condition, SampleShapes


def _four_positive(_: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if len(value) != 4 or any(int(v) < 1 for v in value):
        raise ValueError(f"{attribute.name} must be four positive sizes (C, T, H, W), got {list(value)}")


@attrs.define
class RandomLatentsConfig:
    #: Shape of one latent sample (C, T, H, W); T = 1 for images.
    shape: tuple[int, int, int, int] = attrs.field(converter=tuple, validator=_four_positive)
    #: Text tokens per sample and their width (e.g. 512 × 1024 for T5 in Cosmos-Predict2).
    text_length: int = attrs.field(default=8, validator=schema.positive)
    text_dim: int = attrs.field(default=1024, validator=schema.positive)
    #: Seed of the whole stream: batch i is a function of (seed, i) only.
    seed: int = attrs.field(default=0, validator=schema.non_negative)
    #: Provide an all-zero text embedding as the null condition for classifier-free guidance.
    null_text: bool = True
    #: Video2World: the first ``condition_frames`` latent frames condition the rest. Adds the condition keys
    #: ``condition_latents`` (the sample's own latents) and ``condition_mask`` (B, 1, T, H, W).
    condition_frames: int = attrs.field(default=0, validator=schema.non_negative)

    def __attrs_post_init__(self) -> None:
        if self.condition_frames >= self.shape[1] and self.condition_frames:
            raise ValueError(f"condition_frames ({self.condition_frames}) must be fewer than T ({self.shape[1]})")

    def sample_shapes(self) -> SampleShapes:
        """The configured shape, text of (text_length, text_dim) and the Video2World conditions."""
        shape = tuple(int(s) for s in self.shape)
        condition: dict[str, tuple[int | None, ...]] = {"text": (self.text_length, self.text_dim)}
        if self.condition_frames:
            condition.update(condition_latents=shape, condition_mask=(1, *shape[1:]))
        return SampleShapes(x0=shape, condition=condition)


class RandomLatents:
    """Standard-normal latents of a fixed shape and standard-normal text embeddings, reproducible by seed.

    Batch ``i`` is drawn from its own generator seeded from ``(seed, i)``, so the stream does not depend on
    the engine's generator and a resumed run (``state_dict`` holds ``i``) sees the same batches as an
    uninterrupted one. Evaluation conditions come from a separate stream of the same seed.
    """

    def __init__(self, config: RandomLatentsConfig) -> None:
        self.config = config
        self.sample_shape: tuple[int, ...] = tuple(int(s) for s in config.shape)
        self.batches = 0

    def _generator(self, stream: int, index: int) -> torch.Generator:
        # Distinct streams for training batches (0) and evaluation conditions (1).
        return torch.Generator().manual_seed((self.config.seed * 2 + stream) * 1_000_003 + index)

    def _conditions(self, x0: Tensor, g: torch.Generator) -> tuple[Condition, Condition | None]:
        c = self.config
        n = x0.shape[0]
        text = torch.randn(n, c.text_length, c.text_dim, generator=g)
        condition: Condition = {"text": text}
        null: Condition | None = {"text": torch.zeros_like(text)} if c.null_text else None
        if c.condition_frames:
            mask = torch.zeros(n, 1, *self.sample_shape[1:])
            mask[:, :, : c.condition_frames] = 1.0
            extra = {"condition_latents": x0, "condition_mask": mask}
            condition.update(extra)
            if null is not None:
                null.update(extra)
        return condition, null

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        g = self._generator(0, self.batches)
        self.batches += 1
        x0 = torch.randn(batch_size, *self.sample_shape, generator=g)
        condition, null = self._conditions(x0, g)
        return Batch(x0=x0, condition=condition, null_condition=null)

    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        g = self._generator(1, 0)
        x0 = torch.randn(n, *self.sample_shape, generator=g)
        return self._conditions(x0, g)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batches = int(state["batches"])

    def __repr__(self) -> str:
        c = self.config
        return f"RandomLatents(shape={list(self.sample_shape)}, text=({c.text_length}, {c.text_dim}), seed={c.seed})"


def random_latents(config: RandomLatentsConfig) -> RandomLatents:
    """Deterministic random latents (C, T, H, W) with random text embeddings, for smoke tests and CI."""
    return RandomLatents(config)


COMPONENT = rr.Component(kind="dataset", name="random_latents", factory=random_latents, config=RandomLatentsConfig)
