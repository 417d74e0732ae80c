"""Prompts for ``rcm synth``: ``.txt``, ``.jsonl`` or ``.safetensors`` (precomputed embeddings) files.

``.txt``: one prompt per non-empty line. ``.jsonl``: one JSON object with a ``prompt`` per non-empty line.
``.safetensors``: ``text`` (N, L, D) embeddings, optional ``text_mask`` (N, L), ``negative_text`` (1, L, D)
and ``negative_text_mask`` (1, L), ``cond.NAME`` (N, ...) network conditions besides the text, and optional
metadata ``captions`` (a JSON list of N strings). A ``--conditions`` file adds ``cond.NAME`` rows
(:mod:`rcm_registry.conditions`). :class:`PromptSet` is the :class:`rcm_registry.protocols.SynthPrompts`
the ``latent_shards`` store hands to ``rcm synth``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import attrs
from rcm_plugins.data.latent_shards_format import CAPTIONS_KEY, ShardError, file_sha256, read_header
from torch import Tensor

from rcm_registry.conditions import COND_PREFIX, conditions_of, load_conditions
from rcm_registry.errors import UserError


def clean_prompt(text: str) -> str:
    """Undo HTML escapes and collapse whitespace, as Wan's and Cosmos' pipelines do before tokenising
    (``ftfy`` repairs mojibake first when it is installed)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


@attrs.define
class PromptSet:
    """Prompts to synthesise: captions (a text file or JSON lines), or precomputed embeddings."""

    source: Path
    sha256: str
    captions: list[str] | None = None
    #: (N, L, D) text embeddings and (N, L) masks when the prompts come as a safetensors file.
    text: Tensor | None = None
    text_mask: Tensor | None = None
    #: The negative prompt's (1, L, D) embedding and (1, L) mask, when the embeddings file has one.
    negative_text: Tensor | None = None
    negative_mask: Tensor | None = None
    #: Per-prompt network conditions besides the text, by condition name (``cond.NAME`` in the files), (N, ...).
    conditions: dict[str, Tensor] = attrs.field(factory=dict)
    #: The ``--conditions`` file they came from, and its sha256 (None: none, or in the prompts file).
    conditions_source: Path | None = None
    conditions_sha256: str | None = None

    def __len__(self) -> int:
        if self.captions is not None:
            return len(self.captions)
        assert self.text is not None
        return int(self.text.shape[0])

    def record(self) -> dict[str, Any]:
        """The identity ``rcm synth`` records in ``synth.json``: file digests, count and condition names."""
        return {
            "prompts_sha256": self.sha256,
            "prompts": len(self),
            "conditions": sorted(self.conditions),
            "conditions_sha256": self.conditions_sha256,
        }


def read_prompt_set(path: Path, conditions: Path | None = None) -> PromptSet:
    """``--prompts`` :func:`read_prompts`, with the rows of a ``--conditions`` file (:func:`read_conditions`)."""
    prompts = read_prompts(path)
    if conditions is not None:
        read_conditions(conditions, prompts)
    return prompts


def read_prompts(path: Path) -> PromptSet:
    """``.txt``: one prompt per non-empty line; ``.jsonl``: one object with ``prompt`` per line;
    ``.safetensors``: ``text`` (N, L, D), optional ``text_mask`` (N, L), ``negative_text`` (1, L, D),
    ``negative_text_mask`` (1, L), ``cond.NAME`` (N, ...) network conditions besides the text, and
    optional metadata ``captions`` (a JSON list)."""
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    digest = file_sha256(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            _, metadata = read_header(path)
        except ShardError:
            raise
        except Exception as exc:
            raise UserError(f"--prompts {path}: not a readable safetensors file ({exc})") from None
        if "text" not in tensors or tensors["text"].ndim != 3:
            raise UserError(f"--prompts {path} [text]: expected (N, L, D) text embeddings")
        captions = json.loads(metadata[CAPTIONS_KEY]) if CAPTIONS_KEY in metadata else None
        text = tensors["text"]
        if captions is not None and len(captions) != text.shape[0]:
            raise UserError(f"--prompts {path} [captions]: {len(captions)} captions for {text.shape[0]} embeddings")
        mask = tensors.get("text_mask")
        if mask is not None and tuple(mask.shape) != tuple(text.shape[:2]):
            raise UserError(f"--prompts {path} [text_mask]: shape {list(mask.shape)}, expected {list(text.shape[:2])}")
        negative = tensors.get("negative_text")
        if negative is not None and (
            negative.ndim != 3 or negative.shape[0] != 1 or negative.shape[2] != text.shape[2]
        ):
            raise UserError(f"--prompts {path} [negative_text]: expected (1, L, {text.shape[2]})")
        known = {"text", "text_mask", "negative_text", "negative_text_mask"}
        unknown = [k for k in tensors if k not in known and not k.startswith(COND_PREFIX)]
        if unknown:
            raise UserError(
                f"--prompts {path}: unexpected tensors {', '.join(unknown)} (conditions are named {COND_PREFIX}NAME)"
            )
        prompts = PromptSet(source=path, sha256=digest, captions=captions, text=text, text_mask=mask)
        prompts.conditions = conditions_of(f"--prompts {path}", tensors, int(text.shape[0]))
        prompts.negative_text = negative
        prompts.negative_mask = tensors.get("negative_text_mask")
        if negative is not None and prompts.negative_mask is None:
            prompts.negative_mask = negative.abs().amax(-1) > 0
        if prompts.text_mask is None:
            prompts.text_mask = text.abs().amax(-1) > 0
        return prompts
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc})") from None
    captions: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                captions.append(str(item["prompt"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"--prompts {path}:{number}: expected a JSON object with a 'prompt'") from None
    else:
        captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise UserError(f"--prompts {path}: no prompts")
    return PromptSet(source=path, sha256=digest, captions=captions)


def read_conditions(path: Path, prompts: PromptSet) -> None:
    """Add the ``cond.NAME`` tensors of ``path`` (``--conditions``; one row per prompt) to ``prompts``."""
    conditions = load_conditions(path, len(prompts))
    both = sorted(set(conditions) & set(prompts.conditions))
    if both:
        raise UserError(f"--conditions {path}: {', '.join(both)} also given in --prompts {prompts.source}")
    prompts.conditions.update(conditions)
    prompts.conditions_source = path
    prompts.conditions_sha256 = file_sha256(path)
