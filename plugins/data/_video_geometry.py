"""The frame and pixel arithmetic every causal video codec shares: 1 + k·f_t frames to 1 + k latent frames,
pixels by f_s."""

from __future__ import annotations

from rcm_registry.errors import UserError


class CausalVideoGeometry:
    """``latent_shape`` and ``pixel_shape`` from ``name``, ``latent_channels``, ``temporal_factor`` and
    ``spatial_factor``, which the codec sets."""

    name: str
    latent_channels: int
    temporal_factor: int
    spatial_factor: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent (C, T, H, W) of a video; frames = 1 + k·f_t, height and width multiples of f_s."""
        ft, fs = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % ft:
            raise UserError(f"{self.name}: frames must be 1 + a multiple of {ft}, got {frames}")
        if height % fs or width % fs:
            raise UserError(f"{self.name}: height and width must be multiples of {fs}, got {height}×{width}")
        return (self.latent_channels, (frames - 1) // ft + 1, height // fs, width // fs)

    def pixel_shape(self, latent: tuple[int, ...]) -> tuple[int, int, int]:
        """(frames, height, width) a latent of shape (C, T, H, W) decodes to."""
        _, t, h, w = latent
        return ((t - 1) * self.temporal_factor + 1, h * self.spatial_factor, w * self.spatial_factor)
