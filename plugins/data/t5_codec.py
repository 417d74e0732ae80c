"""``t5``: Cosmos-Predict2's text encoder (T5-11B, 1024-d tokens) from a local transformers directory."""

from __future__ import annotations

import attrs
from rcm_plugins.data._t5_text import T5TextConfig, T5TextEncoder

import rcm_registry as rr


@attrs.define(kw_only=True)
class T5Config(T5TextConfig):
    """``{use: t5, path: .../text_encoder, tokenizer: .../tokenizer}``"""

    # Cosmos' pipeline tokenises the prompt as given.
    clean: bool = False


def t5(config: T5Config) -> T5TextEncoder:
    """Cosmos-Predict2 T5 text encoder (transformers T5EncoderModel + tokenizer, local paths; extra [cosmos])."""
    return T5TextEncoder(config, "T5EncoderModel", "cosmos", "t5")


COMPONENT = rr.Component(kind="codec", name="t5", factory=t5, config=T5Config)
