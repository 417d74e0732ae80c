"""The process group of a run started by torchrun, and the few collective helpers the engine needs.

``torchrun --nproc_per_node N -m rcm_registry.cli run RECIPE`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. The engine reads them
here: the default process group uses NCCL on CUDA and gloo on the CPU. Without those variables (a plain
``rcm run``) everything below degrades to the single-process answer, so callers need no special case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist

from rcm_registry.errors import UserError

T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@attrs.frozen
class LaunchEnv:
    """What torchrun told this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_env() -> LaunchEnv:
    """The torchrun variables of this process (rank 0 of 1 when there are none)."""
    if "WORLD_SIZE" not in os.environ:
        return LaunchEnv()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start multi-process runs with torchrun")
    try:
        return LaunchEnv(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
        )
    except ValueError as exc:
        raise UserError(f"torchrun environment: {exc}") from None


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """``device`` with the CUDA index of this process's local rank (one GPU per process)."""
    if device.type != "cuda" or not is_initialized():
        return device
    index = launch_env().local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(device: torch.device, *, timeout_s: float = 1800.0) -> bool:
    """Join the default process group from the torchrun environment; True when there is one.

    Idempotent: a group that already exists (a test that made its own, or an earlier call) is kept.
    """
    if is_initialized():
        return True
    env = launch_env()
    if not env.distributed:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend=backend_for(device.type),
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes logs, metrics and shared files."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result, or its :class:`UserError`, to every rank.

    Without this a user error on rank 0 (say, the run directory already exists) would leave the other
    ranks waiting at their next collective until the timeout.
    """
    if not is_initialized():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
