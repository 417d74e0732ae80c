"""Whether a valid recipe can run on this machine: its ``run.device``, and memory for its networks.

Called by the commands that read a recipe (``rcm validate``, ``rcm run``) after
:func:`~rcm_registry.recipe.validate.validate_recipe`, so the answer is about the machine the command runs
on. The memory check only refuses what clearly cannot fit: the parameter memory alone (weights, gradients
and Adam moments of the trained networks, EMA copies, the frozen ones' weights), divided by the number of
processes as if every strategy sharded all of it, above the memory there is. The activation estimate is
reported beside it, never used to refuse.
"""

from __future__ import annotations

import math
import os

import torch

from rcm_registry import distributed
from rcm_registry.errors import UserError
from rcm_registry.protocols import network_inputs, parameter_count, sample_shapes
from rcm_registry.recipe.sections import Recipe

GIB = 1024**3
#: Bytes a parameter holds while training: fp32 weight, gradient and Adam's two moments.
TRAINED_BYTES = 4 * 4
#: Bytes of a parameter that is only evaluated (fp32 weight), and of an EMA's shadow copy.
FROZEN_BYTES = EMA_BYTES = 4
#: Activation bytes kept per token, per unit of width and per layer (a rough transformer figure).
ACTIVATION_BYTES = 4 * 16


def machine_problems(recipe: Recipe) -> list[str]:
    """``run.device`` unknown or absent here, or networks whose parameters alone exceed its memory."""
    from rcm_registry.engine.graph import pick_device

    try:
        device = pick_device(recipe.body.run.device)
    except UserError as exc:
        return [str(exc)]
    return _memory_problems(recipe, device)


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (a GPU's total, the host's available RAM), or None when unknown."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _memory_problems(recipe: Recipe, device: torch.device) -> list[str]:
    trained = recipe.trained_roles()
    averaged = {recipe.trains(name) for name, phase in recipe.body.phases.items() if phase.ema is not None}
    parts: list[str] = []
    total = 0
    activations = 0.0
    batch = recipe.body.run.batch_size
    world = max(1, distributed.launch_env().world_size)
    try:
        shapes = sample_shapes(recipe.body.data.config)
    except (UserError, ValueError):
        shapes = None
    for role, entry in recipe.networks.items():
        try:
            count = parameter_count(entry.spec.config)
            inputs = network_inputs(entry.spec.config)
        except (UserError, ValueError):  # reported by the graph checks
            continue
        if count is None:
            continue
        per = TRAINED_BYTES if role in trained else FROZEN_BYTES
        per += EMA_BYTES if role in averaged else 0
        total += count * per
        parts.append(f"networks.{role} {count / 1e9:.3g}e9 parameters × {per} B")
        if role in trained and inputs is not None and inputs.width and shapes is not None and shapes.x0:
            activations += _activation_bytes(count, inputs.width, inputs.x.multiple_of, shapes.x0, batch / world)
    available = available_memory(device)
    need = total / world
    if available is None or need <= available:
        return []
    ranks = f" per process of {world}" if world > 1 else ""
    return [
        f"networks: about {need / GIB:.1f} GiB of parameter memory{ranks} (weights, gradients and Adam states "
        f"of the trained networks, EMA copies, frozen weights: {'; '.join(parts)}), plus roughly "
        f"{activations / world / GIB:.1f} GiB of activations at run.batch_size {batch}, and {device} has "
        f"{available / GIB:.1f} GiB: use smaller networks, or shard them over more GPUs (parallel: {{use: fsdp2}})"
    ]


def _activation_bytes(
    count: int, width: int, patch: tuple[int, ...] | None, sample: tuple[int | None, ...], batch: float
) -> float:
    """batch × tokens × width × layers × a per-element figure; layers ≈ parameters / (12 · width²)."""
    sizes = [s or 1 for s in sample]
    tokens = math.prod(sizes[1:]) / math.prod((patch or (1,) * len(sizes))[1:]) if len(sizes) > 1 else 1
    layers = max(1.0, count / (12 * width * width))
    return batch * tokens * width * layers * ACTIVATION_BYTES
