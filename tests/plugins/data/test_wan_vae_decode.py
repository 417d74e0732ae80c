"""The chunked Wan VAE decode equals diffusers' frame-by-frame decode (float32 and float64, Wan2.1 and the
residual Wan2.2 layout), and so do its 3-D convolutions run as 2-D ones over frames; the codec's
decode_chunk_frames / decode_dtype / decode_channels_last / decode_conv3d_as_2d options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rcm_plugins.data._wan_vae_conv import conv3d_as_conv2d, frames_as_2d
from rcm_plugins.data._wan_vae_decode import decode_in_chunks
from rcm_plugins.data.tiny import write_tiny_codecs

import rcm_registry as rr

diffusers = pytest.importorskip("diffusers")


def wan21_vae() -> torch.nn.Module:
    """×4 in time (two temporal upsamplers, as Wan2.1's ×4), ×8 in space, the mid-block attention."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def wan22_vae() -> torch.nn.Module:
    """The residual layout with 2×2 patches (Wan2.2's VAE in miniature)."""
    torch.manual_seed(1)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    ).eval()  # fmt: skip


def randomise(vae: torch.nn.Module) -> None:
    """Away from diffusers' zero-initialised layers, so that every path carries signal."""
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))


CASES = [(wan21_vae, 4), (wan22_vae, 2)]


@pytest.mark.parametrize(("build", "ft"), CASES, ids=["wan2.1", "wan2.2"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunked_decode_equals_diffusers_in_float32(build, ft: int, chunk: int) -> None:
    vae = build()
    randomise(vae)
    z = torch.randn(1, 4, 6, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(z).sample
    ours = decode_in_chunks(vae, z, chunk, ft)
    assert ours.shape == full.shape == (1, 3, 1 + 5 * ft, *full.shape[3:])
    assert full.std() > 0.05  # the decode carries signal, so equality means something
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("build", "ft"), CASES, ids=["wan2.1", "wan2.2"])
def test_chunked_decode_equals_diffusers_in_float64(build, ft: int) -> None:
    vae = build().double()
    randomise(vae)
    z = torch.randn(1, 4, 5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = vae.decode(z).sample
    torch.testing.assert_close(decode_in_chunks(vae, z, 3, ft), full, rtol=1e-12, atol=1e-12)


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decode_in_chunks(wan21_vae(), torch.zeros(1, 4, 2, 2, 2), 0, 4)


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_codecs(tmp_path_factory.mktemp("codecs"))["vae"]


def test_codec_decode_options(vae_path: Path) -> None:
    latents = torch.randn(1, 16, 4, 3, 5, generator=torch.Generator().manual_seed(4))
    plain = rr.registry().build("codec", "wan_vae", path=str(vae_path))
    chunked = rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_chunk_frames=2)
    reference = plain.decode(latents)
    assert reference.shape == (1, 3, 7, 6, 10)
    torch.testing.assert_close(chunked.decode(latents), reference, rtol=1e-5, atol=1e-5)
    low = rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_dtype="bf16", decode_chunk_frames=3)
    assert low.vae.decoder.conv_in.weight.dtype == torch.bfloat16
    assert low.vae.encoder.conv_in.weight.dtype == torch.float32  # encoding keeps `dtype`
    decoded = low.decode(latents)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, reference, rtol=0, atol=0.05)  # bf16 rounding, not another picture
    # Encoding still works next to a bf16 decoder.
    assert low.encode(reference[:, :, :5]).shape == (1, 16, 3, 3, 5)


def test_decode_chunk_frames_must_be_positive(vae_path: Path) -> None:
    with pytest.raises((rr.UserError, ValueError), match="decode_chunk_frames"):
        rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_chunk_frames=0)


def test_channels_last_and_cudnn_benchmark_decode_the_same(vae_path: Path) -> None:
    latents = torch.randn(1, 16, 4, 3, 5, generator=torch.Generator().manual_seed(5))
    reference = rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_chunk_frames=2).decode(latents)
    for options in ({"decode_channels_last": True}, {"decode_channels_last": True, "decode_chunk_frames": 2}):
        codec = rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_cudnn_benchmark=True, **options)
        weight = codec.vae.decoder.conv_in.weight
        assert weight.dim() == 5 and weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not codec.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
        before = torch.backends.cudnn.benchmark
        decoded = codec.decode(latents)
        assert torch.backends.cudnn.benchmark == before  # switched on for the decode only
        assert decoded.is_contiguous()
        torch.testing.assert_close(decoded, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride"),
    [((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (1, 1, 1)), ((1, 1, 1), (1, 1, 1)), ((1, 3, 3), (1, 1, 1)),
     ((3, 3, 3), (2, 1, 1)), ((3, 3, 3), (1, 2, 2))],
)  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3d_as_conv2d_equals_conv3d_in_float64(
    kernel: tuple[int, int, int], stride: tuple[int, int, int], channels_last: bool
) -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 7, 6, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, *kernel, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    out = conv3d_as_conv2d(x, weight, bias, stride)
    torch.testing.assert_close(out, F.conv3d(x, weight, bias, stride), rtol=1e-12, atol=1e-12)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)  # the layout the next layer expects


def test_conv3d_as_conv2d_refuses_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="3 channels, the kernel takes 5"):
        conv3d_as_conv2d(torch.zeros(1, 3, 3, 4, 4), torch.zeros(2, 5, 3, 3, 3), None, (1, 1, 1))


@pytest.mark.parametrize(("build", "ft"), CASES, ids=["wan2.1", "wan2.2"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_2d_frame_convolutions_decode_as_diffusers_in_float64(build, ft: int, channels_last: bool) -> None:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    vae = build().double()
    randomise(vae)
    z = torch.randn(1, 4, 5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = vae.decode(z).sample
    convs = sum(type(m) is WanCausalConv3d for m in vae.decoder.modules())
    assert frames_as_2d(vae.decoder) == convs > 0 and frames_as_2d(vae.post_quant_conv) == 1
    # Still WanCausalConv3d to the decoder's checks that decide what it caches between frames.
    assert all(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d))
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decode_in_chunks(vae, z, 3, ft), full, rtol=1e-12, atol=1e-12)


def test_codec_decodes_the_same_with_2d_frame_convolutions(vae_path: Path) -> None:
    latents = torch.randn(1, 16, 4, 3, 5, generator=torch.Generator().manual_seed(8))
    reference = rr.registry().build("codec", "wan_vae", path=str(vae_path)).decode(latents)
    for options in ({}, {"decode_channels_last": True, "decode_chunk_frames": 2}):
        codec = rr.registry().build("codec", "wan_vae", path=str(vae_path), decode_conv3d_as_2d=True, **options)
        assert type(codec.vae.decoder.conv_in).__name__ == "FramewiseCausalConv3d"
        assert type(codec.vae.encoder.conv_in).__name__ == "WanCausalConv3d"  # the encoder is left as it is
        torch.testing.assert_close(codec.decode(latents), reference, rtol=1e-5, atol=1e-5)
