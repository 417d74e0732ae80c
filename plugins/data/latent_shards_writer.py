"""``rcm synth``'s and ``rcm convert-data``'s writer of latent shards (:mod:`rcm_plugins.data.latent_shards_format`).

:class:`LatentShardsWriter` is the :class:`rcm_registry.protocols.SynthStore` of the ``latent_shards``
dataset. Shard ``k`` is ``shard-{k:06d}.safetensors``; it is written under a temporary name, fsynced and
renamed, and ``index.json`` is rewritten after it, so a kill leaves complete shards and at worst a
temporary file (dropped by the next start). ``synth.json`` holds the settings the directory was started
with; continuing with others is refused, so a dataset never mixes them. A shard left by an earlier run is
trusted only after its ``prompt_index`` tensor is checked to hold exactly its prompts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rcm_plugins.data.latent_shards_format import (
    FORMAT,
    INDEX_NAME,
    NEGATIVE_NAME,
    SETTINGS_NAME,
    ShardEntry,
    ShardError,
    ShardIndex,
    file_sha256,
    header_specs,
    read_header,
    shard_name,
    write_shard,
)
from rcm_plugins.data.prompts import PromptSet, read_prompt_set
from torch import Tensor

from rcm_registry.atomic import atomic_file, is_temporary, write_text_atomic
from rcm_registry.conditions import COND_PREFIX
from rcm_registry.errors import UserError

#: Settings that synth.json files written before they existed lack, with the value they had then.
_SETTINGS_DEFAULTS: dict[str, Any] = {"conditions": [], "conditions_sha256": None}
#: Before samplers were registry components, synth.json held the solver's name and its settings at the top.
_SOLVER_NAMES = {"euler": "trigflow_euler", "unipc": "trigflow_unipc"}
_SOLVER_SETTINGS = ("steps", "shift", "guidance", "sigma_max")


def _upgraded(saved: dict[str, Any]) -> dict[str, Any]:
    """A synth.json record of an earlier layout in today's (same samples, same settings)."""
    saved = {**_SETTINGS_DEFAULTS, **saved}
    if saved.get("sampler") in _SOLVER_NAMES and "sampler.steps" not in saved:
        saved["sampler"] = _SOLVER_NAMES[saved["sampler"]]
        for key in _SOLVER_SETTINGS:
            saved[f"sampler.{key}"] = saved.pop(key, None)
    return saved


class LatentShardsWriter:
    """Writes ``rcm synth``'s samples as latent shards into ``root`` (resumable; see the module docs)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.entries: dict[int, ShardEntry] = {}
        self.info: dict[str, Any] = {}
        self.captions = False
        self._known: dict[str, ShardEntry] = {}  # entries of the index an earlier run left, by file

    def read_prompts(self, path: Path, conditions: Path | None = None) -> PromptSet:
        return read_prompt_set(path, conditions)

    def start(self, settings: Mapping[str, Any], info: Mapping[str, Any], *, captions: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_settings(dict(settings))
        for stale in self.root.iterdir():  # a write cut short by a kill; its shard is simply redone
            if is_temporary(stale) and stale.is_file():
                stale.unlink()
        self.info = dict(info)
        self.captions = captions
        if (self.root / INDEX_NAME).is_file():
            try:
                self._known = {e.file: e for e in ShardIndex.read(self.root).shards}
            except ShardError:
                self._known = {}  # rebuilt from the shards themselves

    def _check_settings(self, record: dict[str, Any]) -> None:
        out, path = self.root, self.root / SETTINGS_NAME
        if not path.exists():
            if (out / INDEX_NAME).exists() or any(out.glob("shard-*.safetensors")):
                raise UserError(
                    f"--out {out}: holds shards not written by `rcm synth` or `rcm convert-data` (no {SETTINGS_NAME}); "
                    "use another"
                )
            write_text_atomic(path, json.dumps(record, indent=1) + "\n")
            return
        try:
            saved = _upgraded(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise UserError(f"{path}: not readable ({exc})") from None
        diff = [f"{k}: {saved.get(k)!r} then, {record.get(k)!r} now" for k in record if saved.get(k) != record.get(k)]
        if diff:
            raise UserError(
                f"--out {out} was started with other settings; resuming would mix them. Differences:\n  "
                + "\n  ".join(diff)
            )

    def has_shard(self, k: int, first: int, count: int) -> bool:
        path = self.root / shard_name(k)
        if not path.is_file():
            return False
        header, _ = read_header(path)
        entry = header.get("prompt_index")
        if entry is None or list(entry.get("shape", [])) != [count]:
            raise ShardError(f"{path} [prompt_index]: expected prompts {first}..{first + count - 1}; delete the file")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            indices = f.get_tensor("prompt_index").tolist()
        if indices != list(range(first, first + count)):
            raise ShardError(f"{path} [prompt_index]: holds prompts {indices}, expected {first}..{first + count - 1}")
        size = path.stat().st_size
        old = self._known.get(path.name)
        if old is None or old.bytes != size or not old.sha256:
            old = ShardEntry(file=path.name, count=count, bytes=size, sha256=file_sha256(path))
        self.entries[k] = old
        return True

    def write_negative(self, text: Tensor, mask: Tensor, prompt: str) -> None:
        path = self.root / NEGATIVE_NAME
        if path.is_file():
            return
        from safetensors.torch import save_file

        tensors = {"text": text.cpu().contiguous(), "text_mask": mask.to(torch.bool).cpu().contiguous()}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "prompt": prompt})

    def write_shard(
        self,
        k: int,
        first: int,
        *,
        latents: Tensor,
        text: Tensor,
        text_mask: Tensor,
        conditions: Mapping[str, Tensor],
        captions: Sequence[str] | None,
    ) -> None:
        count = int(latents.shape[0])
        tensors = {"latents": latents, "text": text, "text_mask": text_mask.to(torch.bool)}
        tensors.update({COND_PREFIX + key: value for key, value in conditions.items()})
        tensors["prompt_index"] = torch.arange(first, first + count, dtype=torch.int64)
        self.entries[k] = write_shard(self.root / shard_name(k), tensors, captions)
        self._write_index()  # after every shard, so a partial dataset is already usable

    def finish(self) -> tuple[int, int]:
        if not self.entries:  # nothing written yet (e.g. --max-shards 0 on a new directory)
            return 0, 0
        index = self._write_index()
        return index.total, len(index.shards)

    def _write_index(self) -> ShardIndex:
        entries = [self.entries[k] for k in sorted(self.entries)]
        header, _ = read_header(self.root / entries[0].file)
        index = ShardIndex(
            root=self.root,
            tensors=header_specs(header),
            shards=entries,
            captions=self.captions,
            negative=NEGATIVE_NAME if (self.root / NEGATIVE_NAME).is_file() else None,
            info=self.info,
        )
        index.write()
        return index
