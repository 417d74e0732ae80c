"""Network conditions besides the text: what a network needs, and the ``cond.NAME`` files they come in.

A network conditioned on more than the prompt (Wan2.1 I2V: ``image``, the CLIP image tokens, and
``image_latent``, the mask and first-frame latents; Cosmos-Predict2 Video2World: ``condition_latents`` and
``condition_mask``) says so through its config's ``condition_shapes(latent_shape)`` (see
:mod:`rcm_registry.protocols`). No codec computes these, so ``rcm synth`` and ``rcm generate`` take them from
a ``--conditions`` safetensors file: one ``cond.NAME`` tensor per condition, one row per prompt. Both check
them against the network before anything runs, and give them to both CFG branches, as the training data does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcm_registry.errors import UserError
from rcm_registry.protocols import condition_shapes

#: Key prefix of a condition tensor in a file: ``cond.image`` holds condition ``image``.
COND_PREFIX = "cond."


def conditions_of(where: str, tensors: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
    """The ``cond.NAME`` tensors of a file by NAME, each checked to hold ``n`` rows (one per prompt); other
    keys are ignored. ``where`` names the file in the errors."""
    out: dict[str, Tensor] = {}
    problems = []
    for key, value in tensors.items():
        if not key.startswith(COND_PREFIX):
            continue
        name = key[len(COND_PREFIX) :]
        if not name or name == "text":
            problems.append(f"{where} [{key}]: not a condition name (the text comes from the prompts)")
        elif value.ndim < 1 or value.shape[0] != n:
            problems.append(f"{where} [{key}]: shape {list(value.shape)}, expected one row per prompt ({n}, ...)")
        else:
            out[name] = value
    if problems:
        raise UserError("\n".join(problems))
    return out


def load_conditions(path: Path, n: int) -> dict[str, Tensor]:
    """The ``cond.NAME`` tensors of a ``--conditions`` file by NAME, each holding ``n`` rows (one per prompt)."""
    if not path.is_file():
        raise UserError(f"--conditions {path}: no such file")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise UserError(f"--conditions {path}: not a readable safetensors file ({exc})") from None
    other = [k for k in tensors if not k.startswith(COND_PREFIX)]
    if other or not tensors:
        found = f"found {', '.join(other)}" if other else "found none"
        raise UserError(f"--conditions {path}: expected {COND_PREFIX}NAME tensors, one row per prompt ({found})")
    return conditions_of(f"--conditions {path}", tensors, n)


def network_conditions(spec: Any, latent_shape: Sequence[int]) -> dict[str, tuple[int | None, ...]] | None:
    """Per-sample shapes of the conditions besides ``text`` that a network needs (None in a size: any), from
    its config's ``condition_shapes``; None when the config does not say."""
    return condition_shapes(spec.config, latent_shape)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if v is None else str(v) for v in shape) + ")"


#: Where ``rcm synth`` takes the conditions besides the text from.
SYNTH_CONDITIONS = (
    "rcm synth",
    "Give them as tensors with one row per prompt, in prompt order, in --conditions FILE.safetensors "
    "(or in a --prompts .safetensors file)",
)


def check_conditions(
    role: str,
    spec: Any,
    needs: Mapping[str, Sequence[int | None]] | None,
    given: Mapping[str, Tensor],
    command: tuple[str, str] = SYNTH_CONDITIONS,
) -> None:
    """A :class:`UserError` naming every condition the network needs but is not given, or gets but does not
    take, and every per-sample shape that does not fit. ``command`` is (name, how to give them) for the
    message."""
    who = f"networks.{role} ({spec.name})"
    name, how = command
    problems = []
    if needs is not None:
        missing = [k for k in needs if k not in given]
        if missing:
            wanted = ", ".join(f"{COND_PREFIX}{k} {_shape_text(needs[k])}" for k in missing)
            problems.append(
                f"{who} is conditioned on more than the text: {name} needs {wanted} per prompt, and no codec "
                f"computes them. {how}"
            )
        for key in given:
            if key not in needs:
                takes = f" (it takes: {', '.join(needs)})" if needs else " (it takes the text only)"
                problems.append(f"{COND_PREFIX}{key}: {who} takes no condition {key!r}{takes}")
    for key, value in given.items():
        want = needs.get(key) if needs is not None else None
        got = tuple(value.shape[1:])
        if want is not None and (
            len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True))
        ):
            problems.append(
                f"{COND_PREFIX}{key}: {list(got)} per prompt, {who} takes {_shape_text(want)} at this --shape"
            )
    if problems:
        raise UserError("\n".join(problems))


def conditions_on(device: torch.device, conditions: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Conditions besides the text on ``device``, floating ones in float32 (as the latent_shards dataset
    gives them to training, whatever they were stored in)."""
    return {k: v.to(device, torch.float32) if v.is_floating_point() else v.to(device) for k, v in conditions.items()}
