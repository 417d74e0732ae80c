"""``umt5``: Wan2.1's text encoder (umT5-XXL, 4096-d tokens) from a local transformers directory."""

from __future__ import annotations

import attrs
from rcm_plugins.data._t5_text import T5TextConfig, T5TextEncoder

import rcm_registry as rr


@attrs.define(kw_only=True)
class UMT5Config(T5TextConfig):
    """``{use: umt5, path: .../text_encoder, tokenizer: .../tokenizer}``"""


def umt5(config: UMT5Config) -> T5TextEncoder:
    """Wan2.1 umT5 text encoder (transformers UMT5EncoderModel + tokenizer, local paths; extra [wan])."""
    return T5TextEncoder(config, "UMT5EncoderModel", "wan", "umt5")


COMPONENT = rr.Component(kind="codec", name="umt5", factory=umt5, config=UMT5Config)
