"""Codecs on tiny random diffusers/transformers models built offline: what they compute, and their errors."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from rcm_plugins.data.tiny import write_tiny_codecs
from transformers import AutoTokenizer, T5Config, T5EncoderModel, UMT5EncoderModel

import rcm_registry as rr


@pytest.fixture(scope="module")
def codecs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_codecs(tmp_path_factory.mktemp("codecs"), words=["rocket"], z_dim=4)


def build(name: str, **config) -> object:
    return rr.registry().build("codec", name, **config)


def test_umt5_pads_with_zeros_and_matches_the_encoder(codecs: dict[str, Path]) -> None:
    enc = build("umt5", path=str(codecs["text_encoder"]), max_length=6, dtype="fp32")  # tokenizer: sibling folder
    text, mask = enc.encode(["a red   rocket", "the cat on a blue sea at night"])
    assert text.shape == (2, 6, 32) and text.dtype == torch.float32
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]  # 3 words + </s>; the long one truncated
    assert torch.all(text[0, 4:] == 0)
    tok = AutoTokenizer.from_pretrained(codecs["tokenizer"])
    model = UMT5EncoderModel.from_pretrained(codecs["text_encoder"])
    ids = tok(["a red rocket"], padding="max_length", max_length=6, return_tensors="pt")
    with torch.no_grad():
        ref = model(ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    torch.testing.assert_close(text[0, :4], ref[0, :4])


def test_t5_codec_for_cosmos(codecs: dict[str, Path], tmp_path: Path) -> None:
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, pad_token_id=0)
    T5EncoderModel(config).save_pretrained(tmp_path / "text_encoder")
    enc = build("t5", path=str(tmp_path / "text_encoder"), tokenizer=str(codecs["tokenizer"]), max_length=5)
    text, mask = enc.encode(["a cat"])
    assert text.shape == (1, 5, 16) and mask.sum() == 3
    assert torch.all(text[0, 3:] == 0) and torch.all(text[0, :3].abs().sum(-1) > 0)


def test_wan_vae_normalises_with_the_config_statistics(codecs: dict[str, Path]) -> None:
    vae = build("wan_vae", path=str(codecs["vae"]))
    assert vae.latent_shape(5, 16, 24) == (4, 3, 8, 12)
    video = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    latents = vae.encode(video)
    ref = AutoencoderKLWan.from_pretrained(codecs["vae"])
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        z = ref.encode(video).latent_dist.mode()
        torch.testing.assert_close(latents, (z - mean) / std)
        out = vae.decode(latents)
        torch.testing.assert_close(out, ref.decode(z).sample.clamp(-1, 1))
    assert out.shape == video.shape


def test_cosmos_vae_scales_by_sigma_data_and_takes_explicit_statistics(codecs: dict[str, Path]) -> None:
    video = torch.rand(1, 3, 1, 8, 8) * 2 - 1
    plain = build("cosmos_vae", path=str(codecs["vae"]), latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scaled = build("cosmos_vae", path=str(codecs["vae"]), latents_mean=[0.0] * 4, latents_std=[1.0] * 4, sigma_data=0.5)
    torch.testing.assert_close(scaled.encode(video), 0.5 * plain.encode(video))
    torch.testing.assert_close(scaled.decode(scaled.encode(video)), plain.decode(plain.encode(video)))


def test_bad_frames_and_statistics(codecs: dict[str, Path]) -> None:
    vae = build("wan_vae", path=str(codecs["vae"]))
    with pytest.raises(rr.UserError, match="frames must be 1 \\+ a multiple of 2"):
        vae.latent_shape(4, 16, 16)
    with pytest.raises(rr.UserError, match="latents_mean has 3 values for 4 latent channels"):
        build("wan_vae", path=str(codecs["vae"]), latents_mean=[0.0] * 3)


def test_missing_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(rr.UserError, match="is not a directory"):
        build("umt5", path=str(tmp_path / "nowhere"))
    with pytest.raises(rr.UserError, match="is not a directory"):
        build("wan_vae", path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(rr.UserError, match="cannot load an AutoencoderKLWan"):
        build("wan_vae", path=str(tmp_path / "empty"))


def test_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.import_module

    def without(name: str, *args, **kwargs):
        if name in ("diffusers", "transformers"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without)
    with pytest.raises(rr.UserError, match=r"pip install 'rcm-registry\[wan\]'"):
        build("umt5", path=str(tmp_path))
    with pytest.raises(rr.UserError, match=r"pip install 'rcm-registry\[cosmos\]'"):
        build("cosmos_vae", path=str(tmp_path))
