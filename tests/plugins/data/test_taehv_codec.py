"""The ``taehv`` codec: the tiny video decoder's layout, its parallel and chunked decodes against a frame by
frame reference, and the codec around it (files, geometry, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rcm_plugins.data._tiny_video_decoder import MemoryBlock, TemporalGrow, TinyVideoDecoder
from rcm_plugins.data.taehv_codec import TaehvCodec, TaehvCodecConfig
from safetensors.torch import save_file
from torch import Tensor

import rcm_registry as rr
from rcm_registry.errors import CheckpointError, UserError


def published_layout(channels: int = 16, patch: int = 1) -> dict[str, tuple[int, ...]]:
    """The decoder keys and shapes of TAEHV's taew2_1 file (taew2_2: 48 channels, patch 2)."""
    keys: dict[str, tuple[int, ...]] = {"decoder.1.weight": (256, channels, 3, 3), "decoder.1.bias": (256,)}
    blocks = {256: (3, 4, 5), 128: (9, 10, 11), 64: (15, 16, 17)}
    for width, indices in blocks.items():
        for i in indices:
            for j, n_in in ((0, 2 * width), (2, width), (4, width)):
                keys[f"decoder.{i}.conv.{j}.weight"] = (width, n_in, 3, 3)
                keys[f"decoder.{i}.conv.{j}.bias"] = (width,)
    keys |= {
        "decoder.7.conv.weight": (256, 256, 1, 1),
        "decoder.8.weight": (128, 256, 3, 3),
        "decoder.13.conv.weight": (256, 128, 1, 1),
        "decoder.14.weight": (64, 128, 3, 3),
        "decoder.19.conv.weight": (128, 64, 1, 1),
        "decoder.20.weight": (64, 64, 3, 3),
        "decoder.22.weight": (3 * patch**2, 64, 3, 3),
        "decoder.22.bias": (3 * patch**2,),
    }
    return keys


@pytest.mark.parametrize(("channels", "patch"), [(16, 1), (48, 2)], ids=["taew2_1", "taew2_2"])
def test_the_state_dict_has_the_published_layout(channels: int, patch: int) -> None:
    own = {k: tuple(v.shape) for k, v in TinyVideoDecoder(channels, patch).state_dict().items()}
    assert own == published_layout(channels, patch)


def frame_by_frame(decoder: TinyVideoDecoder, latents: Tensor) -> Tensor:
    """The decoder as a causal recurrence: each latent frame pushed through the layers one frame at a time,
    a memory block remembering its last input, a temporal grow handing on its frames in order."""
    layers = list(decoder.decoder)
    out: list[Tensor] = []

    def push(x: Tensor, i: int, memory: dict[int, Tensor]) -> None:
        if i == len(layers):
            out.append(torch.pixel_shuffle(x, decoder.patch_size))
            return
        layer = layers[i]
        if isinstance(layer, MemoryBlock):
            past = memory.get(i, torch.zeros_like(x))
            memory[i] = x
            push(layer(x, past), i + 1, memory)
        elif isinstance(layer, TemporalGrow):
            grown = layer.conv(x)
            for part in grown.chunk(layer.stride, dim=1):
                push(part, i + 1, memory)
        else:
            push(layer(x), i + 1, memory)

    videos = []
    for video in latents:  # (C, T, H, W)
        out.clear()
        memory: dict[int, Tensor] = {}
        for t in range(video.shape[1]):
            push(video[:, t][None], 0, memory)
        videos.append(torch.cat(out[3:], 0).clamp(0, 1).permute(1, 0, 2, 3))
    return torch.stack(videos)


def random_decoder(channels: int = 16, patch: int = 1, seed: int = 0) -> TinyVideoDecoder:
    torch.manual_seed(seed)
    decoder = TinyVideoDecoder(channels, patch).double().eval()
    with torch.no_grad():  # He-scaled weights and biases off zero: frames in [0, 1] that vary, not ~0
        for name, p in decoder.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.3 if name.startswith("decoder.22") else 0.0, 0.1)
            else:
                p.normal_(0.0, (1.0 / p[0].numel()) ** 0.5)
    return decoder


@pytest.mark.parametrize(("channels", "patch"), [(16, 1), (48, 2)], ids=["taew2_1", "taew2_2"])
def test_parallel_and_chunked_decodes_equal_the_frame_by_frame_recurrence(channels: int, patch: int) -> None:
    decoder = random_decoder(channels, patch)
    latents = torch.randn(2, channels, 4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = frame_by_frame(decoder, latents)
        assert want.shape == (2, 3, 13, 16 * patch, 24 * patch)  # 1 + 4·3 frames, ×8 pixels (×16 with patches)
        assert 0.05 < (want > 0).double().mean() and want.std() > 0.01  # not a constant or a saturated video
        for chunk in (None, 1, 2, 3):
            got = decoder(latents, chunk)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"chunk {chunk}")
        # A memory block reads the previous frame: changing the second latent frame changes later frames,
        # never earlier ones (the decoder is causal).
        later = latents.clone()
        later[:, :, 1] += 1.0
        moved = (decoder(later) - want).abs().amax(dim=(0, 1, 3, 4))
    assert moved[:1].max() == 0 and moved[1:].min() > 0


def write_weights(path: Path, decoder: TinyVideoDecoder, *, grow_x2: bool = False) -> dict[str, Tensor]:
    state = {f"decoder.{k}": v.float().contiguous() for k, v in decoder.decoder.state_dict().items()}
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)  # the encoder's, not read
    if grow_x2:  # a file with the first temporal grow at ×2: the loader keeps the last frame's channels
        state["decoder.7.conv.weight"] = torch.cat([torch.randn(256, 256, 1, 1), state["decoder.7.conv.weight"]])
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_the_codec_loads_a_weights_file_and_decodes_to_minus_one_one(tmp_path: Path, suffix: str) -> None:
    decoder = random_decoder().float()
    path = tmp_path / f"taew2_1{suffix}"
    write_weights(path, decoder, grow_x2=suffix == ".pth")
    codec = rr.registry().build("codec", "taehv", path=str(path), sigma_data=2.0)
    assert isinstance(codec, TaehvCodec) and codec.latent_channels == 16
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(codec.decoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert codec.latent_shape(81, 480, 832) == (16, 21, 60, 104) and codec.pixel_shape((16, 21, 60, 104)) == (
        81,
        480,
        832,
    )
    latents = torch.randn(1, 16, 3, 2, 2)
    video = codec.decode(latents)
    assert video.shape == (1, 3, 9, 16, 16) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(video, decoder(latents / 2.0) * 2 - 1)
    shapes = rr.registry().config("codec", "taehv", path=str(path)).sample_shapes()
    assert shapes.x0 == (16, None, None, None)


def test_taew2_2_geometry(tmp_path: Path) -> None:
    path = tmp_path / "taew2_2.safetensors"
    write_weights(path, random_decoder(48, 2).float())
    codec = TaehvCodec(TaehvCodecConfig(path=str(path), dtype="bf16", decode_chunk_frames=2))
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (48, 4, 16)
    assert codec.latent_shape(121, 704, 1280) == (48, 31, 44, 80)
    video = codec.decode(torch.randn(1, 48, 2, 1, 2))
    assert video.shape == (1, 3, 5, 16, 32) and video.dtype == torch.float32


def test_bad_files_and_encoding_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a file"):
        TaehvCodecConfig(path=str(tmp_path / "missing.safetensors")).sample_shapes()
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2)}, str(other))
    with pytest.raises(UserError, match=r"holds no TAEHV decoder .*blocks\.0\.weight"):
        rr.registry().build("codec", "taehv", path=str(other))
    path = tmp_path / "taew2_1.safetensors"
    state = write_weights(path, random_decoder().float())
    state["decoder.14.weight"] = torch.zeros(64, 64, 3, 3)
    del state["decoder.20.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as caught:
        rr.registry().build("codec", "taehv", path=str(path))
    assert "decoder.20.weight" in str(caught.value) and "decoder.14.weight: checkpoint (64, 64, 3, 3)" in str(
        caught.value
    )
    write_weights(path, random_decoder().float())
    codec = rr.registry().build("codec", "taehv", path=str(path))
    with pytest.raises(UserError, match="decodes only"):
        codec.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(UserError, match="1 \\+ a multiple of 4"):
        codec.latent_shape(80, 480, 832)
