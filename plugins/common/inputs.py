"""Checking the tensors a video network is called with, so that a wrong shape fails with the shape it wants.

Shared by the network families: they take latents and token sequences the same way, and a shape error
deep inside a patchify or an attention names neither the argument nor what it should have been.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def check_latents(x: Tensor, channels: int, patch_size: Sequence[int], *, hint: str = "") -> None:
    """``x`` is (B, ``channels``, T, H, W), each of T, H, W divisible by its patch size.

    ``hint`` is added to the channel-count message (how to pass channels that come separately).
    """
    if x.ndim != 5:
        raise ValueError(f"x must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"x has {x.shape[1]} channels, the network takes {channels}{hint}")
    for n, p, axis in zip(x.shape[2:], patch_size, "THW", strict=True):
        if n % p:
            raise ValueError(f"x size {n} along {axis} is not divisible by the patch size {p}")


def check_tokens(name: str, tokens: Tensor, batch: int, width: int | None, *, length: str = "L") -> None:
    """``tokens`` (the argument ``name``) is (``batch``, any length, ``width``); ``length`` names the length
    in the message."""
    if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != width:
        raise ValueError(f"{name} must be (B={batch}, {length}, {width}), got {tuple(tokens.shape)}")
