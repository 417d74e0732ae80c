"""The text encoders of Wan2.1 (umT5-XXL) and Cosmos-Predict2 (T5-11B) through transformers.

Both pipelines tokenise to a fixed length (512), run the encoder with the attention mask and zero the
embedding past each prompt's last token; the transformers then read the padded embedding without a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.common.weights import CONFIG_NAME, read_json_object
from rcm_plugins.data.prompts import clean_prompt
from torch import Tensor

from rcm_registry import schema
from rcm_registry.errors import UserError
from rcm_registry.protocols import SampleShapes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def codec_config(path: str, who: str) -> dict[str, Any]:
    """The config.json of codec folder ``path`` (read, nothing loaded); a UserError naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"path: {folder} is not a directory")
    config = read_json_object(folder / CONFIG_NAME)
    if config is None:
        raise UserError(f"path: {folder} has no {CONFIG_NAME} ({who} reads its architecture there)")
    return config


def require(module: str, extra: str, who: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"codec {who} needs the optional dependency {module!r} ({exc}): pip install 'rcm-registry[{extra}]'"
        ) from None


@attrs.define(kw_only=True)
class T5TextConfig:
    #: A transformers encoder directory (config.json + weights), e.g. ``Wan2.1-T2V-1.3B-Diffusers/text_encoder``.
    path: str
    #: The tokenizer directory; default: a ``tokenizer`` folder next to ``path``, else ``path`` itself.
    tokenizer: str | None = None
    #: Tokens per prompt (both pipelines pad and truncate to 512).
    max_length: int = attrs.field(default=512, validator=schema.positive)
    #: dtype the encoder runs in.
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    #: Undo HTML escapes and collapse whitespace before tokenising (Wan does; Cosmos does not).
    clean: bool = True

    def sample_shapes(self) -> SampleShapes:
        """``text`` of (max_length, d_model), d_model from the encoder's config.json (not loaded)."""
        config = codec_config(self.path, type(self).__name__)
        if "d_model" not in config:
            raise UserError(f"{Path(self.path) / CONFIG_NAME}: no d_model (not a T5 encoder's config)")
        return SampleShapes(
            condition={"text": (self.max_length, int(config["d_model"]))}, source=str(Path(self.path) / CONFIG_NAME)
        )


def tokenizer_dir(config: T5TextConfig) -> Path:
    if config.tokenizer is not None:
        return Path(config.tokenizer)
    sibling = Path(config.path).parent / "tokenizer"
    return sibling if sibling.is_dir() else Path(config.path)


class T5TextEncoder:
    """Prompts → ``(text (B, max_length, D) float32, mask (B, max_length) bool)``, zero past each prompt."""

    def __init__(self, config: T5TextConfig, model_class: str, extra: str, name: str) -> None:
        self.config = config
        self.name = name
        transformers = require("transformers", extra, name)
        for label, path in (("path", Path(config.path)), ("tokenizer", tokenizer_dir(config))):
            if not path.is_dir():
                raise UserError(f"codecs ({name}).{label}: {path} is not a directory")
        transformers.utils.logging.disable_progress_bar()  # one bar per load is noise in rcm's output
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir(config)))
            model = getattr(transformers, model_class).from_pretrained(config.path, torch_dtype=DTYPES[config.dtype])
        except (OSError, ValueError) as exc:
            raise UserError(f"codec {name}: cannot load from {config.path} ({exc})") from None
        self.model = model.eval().requires_grad_(False)
        self.dim = int(model.config.d_model)

    def to(self, device: torch.device | str) -> T5TextEncoder:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        texts = [clean_prompt(p) for p in prompts] if self.config.clean else list(prompts)
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.config.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device).bool()
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        return hidden * mask.unsqueeze(-1), mask

    def __repr__(self) -> str:
        return f"{self.name}({self.config.path}, max_length={self.config.max_length}, {self.config.dtype})"
