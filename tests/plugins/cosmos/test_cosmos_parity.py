"""Our Cosmos-Predict2 network against diffusers' CosmosTransformer3DModel, through both key layouts.

Padding-mask caveat: diffusers resizes the padding mask with torchvision, which does not import beside
this torch build. The parity cases therefore use ``concat_padding_mask=False`` (a config diffusers accepts
as is), and the mask channel is checked separately (``test_padding_mask_channel_matches_diffusers``) by
giving diffusers' module a stand-in for the one torchvision call it makes, a nearest-neighbour resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _cosmos_helpers import (
    diffusers_kwargs,
    float64_diffusers,
    make_reference,
    nearest_resize_stand_in,
    run_reference,
    transformer_module,
)
from network_testkit import build, rel_err
from rcm_plugins.cosmos import checkpoint
from safetensors.torch import save_file

# (diffusers config, latent shape (T, H, W), text length, per-frame timesteps, fps): widths, depths, RoPE
# scalings, odd frame counts and patch grids, the learnable position embedding, T2I and V2W.
CASES: dict[str, tuple[dict[str, Any], tuple[int, int, int], int, bool, float | None]] = {
    "t2i-h2-d16-l1-image": (diffusers_kwargs(layers=1), (1, 6, 10), 7, False, None),
    "t2i-h3-d24-l2-learnable-fps": (
        diffusers_kwargs(heads=3, head_dim=24, rope_scale=(2.0, 1.0, 1.5), learnable=True),
        (3, 4, 6),
        5,
        False,
        12.0,
    ),
    "v2w-h2-d20-l2-per-frame": (
        diffusers_kwargs(head_dim=20, v2w=True, rope_scale=(20 / 24, 2.0, 2.0), mlp_ratio=4.0),
        (5, 2, 14),
        4,
        True,
        16.0,
    ),
}


def _name(kwargs: dict[str, Any]) -> str:
    return "cosmos-predict2-v2w" if kwargs["in_channels"] == 17 else "cosmos-predict2-t2i"


def _inputs(kwargs: dict[str, Any], shape: tuple[int, int, int], text_len: int, per_frame: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    b = 2
    out: dict[str, Any] = {
        "x": torch.randn(b, 16, *shape, generator=g),
        "t": torch.rand(b, shape[0], generator=g) if per_frame else torch.rand(b, generator=g),
        "text": torch.randn(b, text_len, kwargs["text_embed_dim"], generator=g),
    }
    if kwargs["in_channels"] == 17:
        mask = torch.zeros(b, 1, *shape)
        mask[:, :, :2] = 1.0
        out["condition_mask"] = mask
    return out


def _ours(net: Any, inp: dict[str, Any], dtype: torch.dtype, **extra: Any) -> torch.Tensor:
    net = net.to(dtype)
    kw = {k: v.to(dtype) for k, v in inp.items() if k == "condition_mask"}
    with torch.no_grad():
        return net(inp["x"].to(dtype), inp["t"].to(dtype), inp["text"].to(dtype), **kw, **extra)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers_loaded_from_its_directory(case: str, tmp_path: Path) -> None:
    kwargs, shape, text_len, per_frame, fps = CASES[case]
    ref = make_reference(kwargs, seed=len(case))
    ref.save_pretrained(tmp_path)
    # No size: the architecture comes from diffusers' config.json; fps is the network's default.
    net = build(_name(kwargs), weights={"path": str(tmp_path)}, attention={"use": "math"}, fps=fps).eval()
    inp = _inputs(kwargs, shape, text_len, per_frame, seed=1)

    expected = run_reference(ref, **inp, fps=fps)
    assert expected.shape == inp["x"].shape
    assert rel_err(_ours(net, inp, torch.float32), expected) <= 1e-5

    with float64_diffusers(ref):
        expected64 = run_reference(ref, **inp, fps=fps)
    assert expected64.dtype == torch.float64
    assert rel_err(_ours(net, inp, torch.float64), expected64) <= 1e-12


def test_fps_rescales_time_only_for_videos() -> None:
    """The fps given per call wins over the network default and changes multi-frame outputs."""
    net = build("cosmos-predict2-v2w", size="tiny", attention={"use": "math"}).eval()
    assert net.default_fps == 16.0
    g = torch.Generator().manual_seed(3)
    x, t, text = torch.randn(1, 16, 3, 4, 4, generator=g), torch.rand(1, generator=g), torch.randn(1, 3, 24)
    with torch.no_grad():
        default, same, other = net(x, t, text), net(x, t, text, fps=torch.tensor([16.0])), net(x, t, text, fps=30)
    assert rel_err(same, default) == 0.0 and rel_err(other, default) > 1e-4


def test_padding_mask_channel_matches_diffusers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """concat_padding_mask=True (every published Cosmos-Predict2 config), with a non-trivial mask at twice the
    latent resolution, so the nearest-neighbour resize and the mask channel's patch weights both count."""
    monkeypatch.setattr(transformer_module, "transforms", nearest_resize_stand_in(), raising=False)
    kwargs = diffusers_kwargs(padding_mask=True, layers=1)
    ref = make_reference(kwargs, seed=9)
    ref.save_pretrained(tmp_path)
    net = build("cosmos-predict2-t2i", weights={"path": str(tmp_path)}, attention={"use": "math"}).eval()
    assert net.arch.embed_channels == 17
    g = torch.Generator().manual_seed(10)
    x, t, text = torch.randn(2, 16, 2, 4, 6, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 24)
    mask = (torch.rand(1, 1, 8, 12, generator=g) > 0.5).float()
    expected = run_reference(ref, x, t, text, padding_mask=mask)
    with torch.no_grad():
        ours = net(x, t, text, padding_mask=mask)
        zeros = net(x, t, text)
    assert rel_err(ours, expected) <= 1e-5
    assert rel_err(zeros, run_reference(ref, x, t, text, padding_mask=torch.zeros(1, 1, 8, 12))) <= 1e-5
    assert rel_err(ours, zeros) > 1e-3  # the channel is live


@pytest.mark.parametrize("case", ["t2i-h2-d16-l1-image", "v2w-h2-d20-l2-per-frame"])
def test_native_layout_matches_diffusers(case: str, tmp_path: Path) -> None:
    """Native keys, checked independently: diffusers' own converter must map our keys onto its model."""
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    kwargs, shape, text_len, per_frame, fps = CASES[case]
    ref = make_reference(kwargs, seed=3)
    native = checkpoint.from_diffusers(ref.state_dict())
    # As the original's model.pt stores them: under `net.`, beside buffers that are not parameters.
    stored = {f"net.{k}": v.contiguous() for k, v in native.items()}
    assert set(convert_cosmos_transformer_checkpoint_to_diffusers(dict(stored))) == set(ref.state_dict())
    stored["net.pos_embedder.seq"] = torch.arange(64.0)
    stored["net.blocks.0.self_attn.q_norm._extra_state"] = torch.zeros(0)

    file = tmp_path / "model.safetensors"
    save_file(stored, str(file))
    arch = {
        "num_heads": kwargs["num_attention_heads"],
        "head_dim": kwargs["attention_head_dim"],
        "num_layers": kwargs["num_layers"],
        "mlp_ratio": kwargs["mlp_ratio"],
        "text_dim": kwargs["text_embed_dim"],
        "adaln_lora_dim": kwargs["adaln_lora_dim"],
        "rope_scale": kwargs["rope_scale"],
        "concat_padding_mask": False,
        "qk_norm_eps": 1e-5,  # what diffusers' Attention builds; the original uses 1e-6
    }
    net = build(_name(kwargs), weights={"path": str(file)}, attention={"use": "math"}, fps=fps, **arch)
    inp = _inputs(kwargs, shape, text_len, per_frame, seed=4)
    assert rel_err(_ours(net.eval(), inp, torch.float32), run_reference(ref, **inp, fps=fps)) <= 1e-5


def test_native_key_names_are_cosmos_predict2s() -> None:
    """Our parameter names are the native Cosmos-Predict2 checkpoint's, block by block."""
    net = build("cosmos-predict2-t2i", size="tiny", num_layers=1, learnable_pos_embed=True, attention={"use": "math"})
    block = {f"{a}.{p}.weight" for a in ("self_attn", "cross_attn") for p in ("q_proj", "k_proj", "v_proj")}
    block |= {f"{a}.{p}.weight" for a in ("self_attn", "cross_attn") for p in ("output_proj", "q_norm", "k_norm")}
    block |= {"mlp.layer1.weight", "mlp.layer2.weight"}
    block |= {f"adaln_modulation_{s}.{i}.weight" for s in ("self_attn", "cross_attn", "mlp") for i in (1, 2)}
    top = {"x_embedder.proj.1.weight", "t_embedder.1.linear_1.weight", "t_embedder.1.linear_2.weight"}
    top |= {"t_embedding_norm.weight", "final_layer.linear.weight"}
    top |= {f"final_layer.adaln_modulation.{i}.weight" for i in (1, 2)}
    top |= {f"extra_pos_embedder.pos_emb_{a}" for a in "thw"}
    assert set(net.state_dict()) == top | {f"blocks.0.{k}" for k in block}
    assert net.state_dict()["x_embedder.proj.1.weight"].shape == (32, 17 * 4)  # 16 latents + padding mask
