"""Our Wan2.1 network against diffusers' WanTransformer3DModel, through both key layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _wan_helpers import (
    DIFFUSERS_I2V_TEXT,
    diffusers_kwargs,
    float64_diffusers,
    make_reference,
    run_reference,
)
from network_testkit import build, rel_err
from rcm_plugins.wan import checkpoint
from safetensors.torch import save_file

# (diffusers config, video shape (T, H, W), text length): head counts, widths, depths, odd frame counts
# and odd patch grids, with and without the cross-attention norm, T2V and I2V.
CASES: dict[str, tuple[dict[str, Any], tuple[int, int, int], int]] = {
    "h2-d24-l1-T1": (diffusers_kwargs(heads=2, head_dim=12, layers=1), (1, 4, 6), 7),
    "h3-d48-l2-T3-grid3x5": (diffusers_kwargs(heads=3, head_dim=16, layers=2, cross_attn_norm=False), (3, 6, 10), 9),
    "h4-d32-l3-T5-grid1x7": (
        diffusers_kwargs(heads=4, head_dim=8, layers=3, text_dim=16, freq_dim=64, eps=1e-5),
        (5, 2, 14),
        4,
    ),
    "i2v-h2-d40-l2-T3": (diffusers_kwargs(heads=2, head_dim=20, layers=2, image_dim=20), (3, 6, 6), DIFFUSERS_I2V_TEXT),
}


def _inputs(kwargs: dict[str, Any], shape: tuple[int, int, int], text_len: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    b = 2
    i2v = kwargs["image_dim"] is not None
    return {
        "x": torch.randn(b, 16, *shape, generator=g),
        "t": torch.rand(b, generator=g) * 1000,
        "text": torch.randn(b, text_len, kwargs["text_dim"], generator=g),
        "image": torch.randn(b, 5, kwargs["image_dim"], generator=g) if i2v else None,
        "latent": torch.randn(b, 20, *shape, generator=g) if i2v else None,
    }


def _ours(net: Any, inp: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    net = net.to(dtype)
    extra = {}
    if inp["image"] is not None:
        extra = {"image": inp["image"].to(dtype), "image_latent": inp["latent"].to(dtype)}
    with torch.no_grad():
        return net(inp["x"].to(dtype), inp["t"].to(dtype), inp["text"].to(dtype), **extra)


def _name(kwargs: dict[str, Any]) -> str:
    return "wan2.1-i2v" if kwargs["image_dim"] is not None else "wan2.1-t2v"


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers_loaded_from_its_directory(case: str, tmp_path: Path) -> None:
    kwargs, shape, text_len = CASES[case]
    ref = make_reference(kwargs, seed=len(case))
    ref.save_pretrained(tmp_path)
    # No size: the architecture comes from diffusers' config.json.
    net = build(_name(kwargs), weights={"path": str(tmp_path)}, attention={"use": "math"}).eval()
    inp = _inputs(kwargs, shape, text_len, seed=1)

    expected = run_reference(ref, **inp)
    assert expected.shape == inp["x"].shape
    assert rel_err(_ours(net, inp, torch.float32), expected) <= 1e-5

    with float64_diffusers(ref):
        expected64 = run_reference(ref, **inp)
    assert expected64.dtype == torch.float64
    assert rel_err(_ours(net, inp, torch.float64), expected64) <= 1e-12


@pytest.mark.parametrize("case", ["h3-d48-l2-T3-grid3x5", "i2v-h2-d40-l2-T3"])
def test_native_layout_matches_diffusers(case: str, tmp_path: Path) -> None:
    """Native keys, checked independently: diffusers' own converter must map our keys onto its model."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    kwargs, shape, text_len = CASES[case]
    ref = make_reference(kwargs, seed=3)
    native = checkpoint.from_diffusers(ref.state_dict())
    # Independent check of our native naming: diffusers' native→diffusers converter gives back its keys.
    assert set(convert_wan_transformer_to_diffusers(dict(native))) == set(ref.state_dict())

    file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in native.items()}, str(file))
    # Architecture fields given explicitly (a lone native file has no config.json).
    arch = {
        "dim": kwargs["num_attention_heads"] * kwargs["attention_head_dim"],
        "num_heads": kwargs["num_attention_heads"],
        "num_layers": kwargs["num_layers"],
        "ffn_dim": kwargs["ffn_dim"],
        "text_dim": kwargs["text_dim"],
        "freq_dim": kwargs["freq_dim"],
        "cross_attn_norm": kwargs["cross_attn_norm"],
    }
    if kwargs["image_dim"] is not None:
        arch["image_dim"] = kwargs["image_dim"]
    net = build(_name(kwargs), weights={"path": str(file), "format": "auto"}, attention={"use": "math"}, **arch)
    inp = _inputs(kwargs, shape, text_len, seed=4)
    assert rel_err(_ours(net.eval(), inp, torch.float32), run_reference(ref, **inp)) <= 1e-5


def test_native_key_names_are_wan21s() -> None:
    """Our parameter names are the native Wan2.1 checkpoint's, block by block."""
    net = build("wan2.1-i2v", size="tiny", num_layers=1, attention={"use": "math"})
    linears = ["q", "k", "v", "o"]
    block = {f"self_attn.{n}.{p}" for n in linears for p in ("weight", "bias")}
    block |= {"self_attn.norm_q.weight", "self_attn.norm_k.weight"}
    block |= {f"cross_attn.{n}.{p}" for n in [*linears, "k_img", "v_img"] for p in ("weight", "bias")}
    block |= {"cross_attn.norm_q.weight", "cross_attn.norm_k.weight", "cross_attn.norm_k_img.weight"}
    block |= {"norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias", "modulation"}
    top = {
        f"{m}.{p}"
        for m in [
            "patch_embedding",
            "text_embedding.0",
            "text_embedding.2",
            "time_embedding.0",
            "time_embedding.2",
            "time_projection.1",
            "head.head",
        ]
        for p in ("weight", "bias")
    }
    top |= {f"img_emb.proj.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")}
    top |= {"head.modulation"} | {f"blocks.0.{k}" for k in block}
    assert set(net.state_dict()) == top
    assert net.state_dict()["blocks.0.modulation"].shape == (1, 6, 64)
    assert net.state_dict()["head.modulation"].shape == (1, 2, 64)
