"""The Wan2.2 VAE codec on a tiny random AutoencoderKLWan in the Wan2.2 configuration (patched, residual)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rcm_registry as rr

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan

Z_DIM = 48  # Wan2.2's latent channels


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.2's VAE layout at toy width: 2×2 pixel patches folded into 12 channels, residual blocks, ×4
    spatial and ×2 temporal downsampling (the real one: ×8 and ×4), 48 latent channels."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        latents_mean=[0.05 * (i % 5 - 2) for i in range(Z_DIM)],
        latents_std=[1.0 + 0.1 * (i % 3) for i in range(Z_DIM)],
    )
    path = tmp_path_factory.mktemp("wan22-vae") / "vae"
    vae.save_pretrained(path)
    return path


def test_wan22_vae_counts_the_patch_in_its_spatial_factor_and_normalises(vae_dir: Path) -> None:
    codec = rr.registry().build("codec", "wan2.2_vae", path=str(vae_dir))
    assert codec.latent_channels == Z_DIM and (codec.temporal_factor, codec.spatial_factor) == (2, 8)
    assert codec.latent_shape(5, 16, 24) == (Z_DIM, 3, 2, 3)
    assert codec.pixel_shape((Z_DIM, 3, 2, 3)) == (5, 16, 24)
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, *codec.latent_shape(5, 16, 24))
    ref = AutoencoderKLWan.from_pretrained(vae_dir)
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        z = ref.encode(video).latent_dist.mode()
        torch.testing.assert_close(latents, (z - mean) / std)
        torch.testing.assert_close(codec.decode(latents), ref.decode(z).sample.clamp(-1, 1))


def test_a_wan21_vae_is_refused_with_the_codec_to_use(tmp_path: Path) -> None:
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4).save_pretrained(tmp_path / "vae")  # fmt: skip
    with pytest.raises(rr.UserError, match=r"Wan2\.1 VAE .*use \{use: wan_vae\}"):
        rr.registry().build("codec", "wan2.2_vae", path=str(tmp_path / "vae"))
