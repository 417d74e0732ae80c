"""Decoding Wan VAE latents several latent frames at a time, carrying the causal convolutions' cache.

diffusers' ``AutoencoderKLWan.decode`` runs its decoder on one latent frame at a time: every causal 3-D
convolution keeps the last two frames of its input in a per-layer cache (``feat_cache``) and prepends them
to the next call's input, so the frames decode as if the whole video went through at once, in the memory of
one frame. One frame per call leaves a large GPU mostly idle and grows the output by ``torch.cat`` each
frame (quadratic copying).

:func:`decode_in_chunks` makes the same calls with ``chunk`` latent frames each after the first frame
(which must go alone: on the first call the temporal upsamplers mark their cache instead of upsampling,
and the residual up-blocks drop the duplicated first frame), and writes each chunk into one output tensor
allocated once. Nothing in the decoder mixes frames but the causal convolutions (attention and the norms act
per frame), so the result equals the frame-by-frame decode; memory grows with ``chunk``, not the video.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _decoder_conv_count(vae: Any) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())


@torch.no_grad()
def decode_in_chunks(vae: Any, z: Tensor, chunk: int, temporal_factor: int) -> Tensor:
    """Un-normalised latents ``z`` (B, C, T, H, W) → pixels (B, 3, 1 + (T − 1)·temporal_factor, H', W'),
    clamped to [−1, 1], in the decoder's dtype; ``chunk`` latent frames per decoder call after the first."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 latent frame, got {chunk}")
    frames = z.shape[2]
    x = vae.post_quant_conv(z)
    cache: list[Any] = [None] * _decoder_conv_count(vae)
    patch = vae.config.patch_size
    out: Tensor | None = None
    start, written = 0, 0
    while start < frames:
        stop = 1 if start == 0 else min(frames, start + chunk)
        piece = vae.decoder(x[:, :, start:stop], feat_cache=cache, feat_idx=[0], first_chunk=start == 0)
        if patch is not None:
            piece = unpatchify(piece, patch_size=patch)
        if out is None:
            total = 1 + (frames - 1) * temporal_factor
            out = piece.new_empty((piece.shape[0], piece.shape[1], total, *piece.shape[3:]))
        out[:, :, written : written + piece.shape[2]] = piece.clamp(-1.0, 1.0)
        written += piece.shape[2]
        start = stop
    assert out is not None and written == out.shape[2], f"decoded {written} frames, expected {out and out.shape[2]}"
    return out
