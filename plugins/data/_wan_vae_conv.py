"""The Wan VAE decoder's causal 3-D convolutions computed as 2-D convolutions over frames (the codec's
``decode_conv3d_as_2d``).

A convolution with a (kt, kh, kw) kernel over (C, T, H, W) is, for each output frame, a 2-D convolution of
the kt input frames it reads stacked along channels (kt·C channels) with the kernel's kt slices stacked the
same way: the same products, summed in one accumulator, so the result equals the 3-D convolution up to the
order of the sum. The frames then ride in the batch dimension, and cuDNN's 2-D kernels, which reach a much
larger share of a GPU's matrix throughput than its 3-D ones, do the work. What it costs: the stacked input,
kt times the layer's input, is materialised once per call (1×1×1 and time-1 kernels need no copy).

diffusers' ``WanCausalConv3d`` keeps doing its causal padding and frame caching; only the convolution call
itself (``_conv_forward``) is replaced, by switching each such layer of the decoder to the subclass below
(the class swap adds no state, and the decoder's ``isinstance`` checks that decide its frame caching still
see a ``WanCausalConv3d``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv3d_as_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int, int]) -> Tensor:
    """``F.conv3d(x, weight, bias, stride)`` without padding, dilation or groups, as one ``F.conv2d`` over
    the output frames; channels-last 3-D inputs stay channels last (no layout copy beyond the stacking)."""
    b, c, t, h, w = x.shape
    c_out, c_in, kt, kh, kw = weight.shape
    st, sh, sw = stride
    if c != c_in:
        raise ValueError(f"conv3d_as_conv2d: input has {c} channels, the kernel takes {c_in}")
    t_out = (t - kt) // st + 1
    channels_last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and c > 1
    # Kernel slice dt multiplies input frame t·st + dt: channel dt·C + c of the stacked frames.
    w2 = weight.permute(0, 2, 1, 3, 4).reshape(c_out, kt * c_in, kh, kw)
    if channels_last:
        # (B, T, H, W, C) memory: the stacked frames as (B·T_out, H, W, kt·C), a channels-last 2-D batch.
        if kt == 1 and st == 1:
            frames = x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c)
        else:
            frames = x.unfold(2, kt, st).permute(0, 2, 3, 4, 5, 1).reshape(b * t_out, h, w, kt * c)
        frames = frames.permute(0, 3, 1, 2)
        w2 = w2.contiguous(memory_format=torch.channels_last)
    else:
        frames = x.unfold(2, kt, st).permute(0, 2, 5, 1, 3, 4).reshape(b * t_out, kt * c, h, w)
    y = F.conv2d(frames, w2, bias, (sh, sw))
    # Splitting the outermost dim is a view in either layout; channels-last 2-D frames are then (B, T, H, W, C)
    # in memory: the 3-D result already channels last.
    out = y.reshape(b, t_out, c_out, *y.shape[-2:]).permute(0, 2, 1, 3, 4)
    return out if channels_last else out.contiguous()


def frames_as_2d(decoder: nn.Module) -> int:
    """Switch every ``WanCausalConv3d`` of ``decoder`` to :func:`framewise_class`'s subclass, in place; returns
    how many were switched."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    cls = framewise_class()
    switched = 0
    for module in decoder.modules():
        if type(module) is WanCausalConv3d:
            module.__class__ = cls
            switched += 1
    return switched


@functools.cache
def framewise_class() -> Any:
    """The subclass of diffusers' ``WanCausalConv3d`` whose convolution runs through
    :func:`conv3d_as_conv2d` (made on first use: diffusers is an optional dependency)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    class FramewiseCausalConv3d(WanCausalConv3d):  # type: ignore[misc]
        """``WanCausalConv3d`` with its convolution over frames as a 2-D convolution."""

        def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
            plain = self.padding_mode == "zeros" and self.groups == 1
            if not plain or any(p != 0 for p in self.padding) or any(d != 1 for d in self.dilation):
                return super()._conv_forward(input, weight, bias)
            return conv3d_as_conv2d(input, weight, bias, self.stride)

    return FramewiseCausalConv3d
