"""Wan2.2 A14B checkpoints both ways: exports load back equal, one expert alone, and wrong layouts are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _wan22_helpers import make_experts, write_diffusers_repository, write_native_repository
from _wan_helpers import from_pretrained
from network_testkit import build, rel_err, trained_like
from safetensors.torch import load_file, save_file

from rcm_registry.errors import CheckpointError

T2V = "wan2.2-t2v-a14b"


def _inputs(net: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(3, 16, 2, 4, 6, generator=g),
        torch.tensor([990.0, 20.0, 875.0]),
        torch.randn(3, 5, 32, generator=g),
    )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("format", ["diffusers", "native"])
def test_export_then_load_gives_the_same_network(format: str, tmp_path: Path) -> None:
    net = trained_like(T2V, seed=2)
    out = net.export(tmp_path / "repo", format=format)
    expected = {"diffusers": ["model_index.json", "transformer", "transformer_2"]}
    assert sorted(p.name for p in out.iterdir()) == expected.get(format, ["high_noise_model", "low_noise_model"])
    again = build(T2V, weights={"path": str(out)}, attention={"use": "math"}).eval()  # layout and arch from the files
    assert again.arch == net.arch and again.boundary == net.boundary and _same_weights(again, net)
    with torch.no_grad():
        # Bit-equal weights; the outputs agree to rounding only, as CPU kernels pick their path by the memory
        # alignment of the tensors read from the files.
        assert rel_err(again(*_inputs(net)), net(*_inputs(net))) <= 1e-6
    if format == "diffusers":
        index = json.loads((out / "model_index.json").read_text())
        assert index["boundary_ratio"] == 0.875 and index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
        for folder, expert in (("transformer", net.high_noise), ("transformer_2", net.low_noise)):
            x, _, text = _inputs(net)
            t = torch.full((3,), 500.0)
            with torch.no_grad():
                theirs = from_pretrained(out / folder)(x, t, text, return_dict=False)[0]
                assert rel_err(expert(x, t, text), theirs) <= 1e-5


def test_one_expert_exports_as_its_checkpoint_folder_and_reads_from_a_repository(tmp_path: Path) -> None:
    both = trained_like(T2V, seed=3)
    both.export(tmp_path / "repo", format="native", dtype=torch.float64)
    # From the repository root, a one-expert network takes its expert's folder.
    low = build(T2V, expert="low_noise", weights={"path": str(tmp_path / "repo")}, attention={"use": "math"})
    assert low.experts == ("low_noise",)
    assert all(torch.equal(v.float(), both.state_dict()[k]) for k, v in low.state_dict().items())
    out = low.export(tmp_path / "low", format="diffusers")
    assert (out / "config.json").is_file() and not (out / "transformer").exists()  # a drop-in transformer_2/
    again = build(T2V, expert="low_noise", weights={"path": str(out)}, attention={"use": "math"})
    assert _same_weights(again, low)
    from_pretrained(out)  # and diffusers reads it strictly


def test_a_repository_missing_an_expert_is_named(tmp_path: Path) -> None:
    root = write_diffusers_repository(tmp_path / "repo", make_experts("t2v", seed=4), "t2v")
    shutil.rmtree(root / "transformer_2")
    with pytest.raises(CheckpointError, match=r"repo: no transformer_2/ \(the low-noise expert\)"):
        build(T2V, weights={"path": str(root)})
    # The high-noise expert alone still reads it.
    build(T2V, expert="high_noise", weights={"path": str(root)}, attention={"use": "math"})
    with pytest.raises(CheckpointError, match="one checkpoint, and this network holds both"):
        build(T2V, weights={"path": str(root / "transformer")})


def test_a_mis_shaped_expert_names_its_file_and_key(tmp_path: Path) -> None:
    root = write_diffusers_repository(tmp_path / "repo", make_experts("t2v", seed=5), "t2v")
    file = root / "transformer_2" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    state["blocks.1.attn2.to_k.weight"] = torch.zeros(24, 7)
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as info:
        build(T2V, weights={"path": str(root)}, attention={"use": "math"})
    text = str(info.value)
    assert str(file) in text and "blocks.1.attn2.to_k.weight: checkpoint (24, 7), network (24, 24)" in text


def test_layouts_that_disagree_are_refused(tmp_path: Path) -> None:
    experts = make_experts("t2v", seed=6)
    diffusers = write_diffusers_repository(tmp_path / "d", experts, "t2v", boundary=0.8)
    with pytest.raises(CheckpointError, match=r"model_index\.json: boundary_ratio 0\.8, .* set `boundary: 0\.8`"):
        build(T2V, weights={"path": str(diffusers)})
    build(T2V, weights={"path": str(diffusers)}, boundary=0.8)
    with pytest.raises(CheckpointError, match=r"a diffusers Wan2\.2 repository, not native"):
        build(T2V, weights={"path": str(diffusers), "format": "native"}, boundary=0.8)
    native = write_native_repository(tmp_path / "n", experts, "t2v")
    config = native / "low_noise_model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"the experts' config\.json files describe different architectures"):
        build(T2V, weights={"path": str(native)})
