"""The decoder of the tiny video autoencoders for Wan latents (TAEHV's ``taew2_1`` and ``taew2_2``).

About ten million parameters of 2-D convolutions that decode the latents a video transformer samples straight
to frames, far cheaper than the full causal 3-D VAE decoder, at some cost in quality (fine detail). Its
layers, in the order and with the indices of the published state dicts (``decoder.{i}.…``):

    0 soft clamp (3·tanh(x/3))    1 conv 3×3 C→256    2 ReLU
    3–5 memory blocks (256)       6 ×2 upsample       7 temporal grow ×1    8 conv 256→128
    9–11 memory blocks (128)      12 ×2 upsample      13 temporal grow ×2   14 conv 128→64
    15–17 memory blocks (64)      18 ×2 upsample      19 temporal grow ×2   20 conv 64→64
    21 ReLU                       22 conv 64→3·p²  (then a p×p pixel shuffle)

Every layer works on frames folded into the batch, except two that reach across time: a *memory block*
sees, beside each frame, its own input of the previous frame (zeros before the first), through
``relu(convs(cat[x_t, x_{t−1}]) + x_t)``; a *temporal grow* makes ``stride`` frames of each one, a 1×1 conv
to ``stride·C`` channels read as ``stride`` consecutive frames. So each latent frame becomes 4 frames; the
decoder's first 3 frames are warm-up and are dropped, and 1 + k latent frames decode to 1 + 4k frames,
as the Wan VAE's do.

Because a memory block needs only the previous frame of its input, the decode can run in chunks of latent
frames with each block's last input frame carried to the next chunk: the same result as one pass over
all frames, with the activations of one chunk in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Channels of the decoder's four stages.
WIDTHS = (256, 128, 64, 64)
#: Temporal strides of the three temporal-grow layers (the Wan decoders': frames ×1, ×2, ×2).
TIME_STRIDES = (1, 2, 2)
#: Frames per latent frame, and pixels per latent pixel before the pixel shuffle.
TIME_FACTOR = 2 ** sum(s == 2 for s in TIME_STRIDES)
SPACE_FACTOR = 2 ** len(TIME_STRIDES)
#: Frames the decoder makes before the first one that matches the VAE's first frame.
WARMUP_FRAMES = TIME_FACTOR - 1


def _conv(n_in: int, n_out: int, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3·tanh(x/3): latents far outside the training range are squashed, not clipped."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemoryBlock(nn.Module):
    """``relu(convs(cat[x_t, past]) + x_t)``, ``past`` being this block's input one frame earlier."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(2 * channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + x)


class TemporalGrow(nn.Module):
    """Each frame becomes ``stride`` frames: a 1×1 conv to ``stride·C`` channels, read as consecutive frames."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        frames, channels, h, w = x.shape
        # (F, s·C, H, W) → (F·s, C, H, W): the s channel groups of a frame are its s new frames, in order.
        return self.conv(x).reshape(frames * self.stride, channels, h, w)


def build_layers(latent_channels: int, patch_size: int) -> nn.Sequential:
    """The decoder's 23 layers, indexed as in the published state dicts."""
    layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, WIDTHS[0]), nn.ReLU()]
    for stage, stride in enumerate(TIME_STRIDES):
        width, narrower = WIDTHS[stage], WIDTHS[stage + 1]
        layers += [MemoryBlock(width) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TemporalGrow(width, stride), _conv(width, narrower, bias=False)]
    layers += [nn.ReLU(), _conv(WIDTHS[-1], 3 * patch_size**2)]
    return nn.Sequential(*layers)


class TinyVideoDecoder(nn.Module):
    """Normalised latents (B, C, T, H, W) → frames (B, 3, 1 + 4(T − 1), 8pH, 8pW) in [0, 1]."""

    def __init__(self, latent_channels: int = 16, patch_size: int = 1) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.patch_size = patch_size
        self.decoder = build_layers(latent_channels, patch_size)

    def forward(self, latents: Tensor, chunk_frames: int | None = None) -> Tensor:
        """Decode ``chunk_frames`` latent frames at a time (all at once when None)."""
        c, t = latents.shape[1:3]
        if c != self.latent_channels:
            raise ValueError(f"latents have {c} channels, the decoder takes {self.latent_channels}")
        frames = latents.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W): frames of one video consecutive
        step = t if chunk_frames is None else chunk_frames
        carries: dict[int, Tensor] = {}
        pieces = [self._decode_chunk(frames[:, s : s + step], carries) for s in range(0, t, step)]
        video = torch.cat(pieces, 1)[:, WARMUP_FRAMES:]  # (B, T', 3, H', W')
        return video.clamp(0, 1).permute(0, 2, 1, 3, 4)

    def _decode_chunk(self, frames: Tensor, carries: dict[int, Tensor]) -> Tensor:
        """One chunk of (B, T, C, H, W) latent frames through every layer; ``carries`` holds each memory
        block's last input frame, read at the chunk's start and updated at its end."""
        b = frames.shape[0]
        x = frames.reshape(-1, *frames.shape[2:])
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemoryBlock):
                video = x.view(b, -1, *x.shape[1:])
                before = carries.get(i, torch.zeros_like(video[:, :1]))
                past = torch.cat([before, video[:, :-1]], 1).reshape(x.shape)
                carries[i] = video[:, -1:]
                x = layer(x, past)
            else:
                x = layer(x)
        x = F.pixel_shuffle(x, self.patch_size)
        return x.view(b, -1, *x.shape[1:])
