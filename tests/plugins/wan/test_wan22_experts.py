"""Wan2.2 A14B: each expert equals diffusers' WanTransformer3DModel, samples go to the expert WanPipeline picks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _wan22_helpers import BOUNDARY, make_experts, write_diffusers_repository, write_native_repository
from _wan_helpers import from_pretrained, run_reference
from network_testkit import build, rel_err

KINDS = {"t2v": "wan2.2-t2v-a14b", "i2v": "wan2.2-i2v-a14b"}


def _inputs(kind: str, timestep: list[float], seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    b = len(timestep)
    return {
        "x": torch.randn(b, 16, 3, 4, 6, generator=g),
        "t": torch.tensor(timestep),
        "text": torch.randn(b, 7, 24, generator=g),
        "image": None,
        "latent": torch.randn(b, 20, 3, 4, 6, generator=g) if kind == "i2v" else None,
    }


def _ours(net: Any, inp: dict[str, Any]) -> torch.Tensor:
    extra = {} if inp["latent"] is None else {"image_latent": inp["latent"]}
    with torch.no_grad():
        return net(inp["x"], inp["t"], inp["text"], **extra)


@pytest.mark.parametrize("layout", ["diffusers", "native"])
@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_each_sample_gets_the_output_of_the_diffusers_expert_that_owns_its_timestep(
    kind: str, layout: str, tmp_path: Path
) -> None:
    experts = make_experts(kind, seed=3)
    write = write_diffusers_repository if layout == "diffusers" else write_native_repository
    root = write(tmp_path / "repo", experts, kind)
    # No size: the architecture comes from the experts' config.json files; the layout is told apart.
    net = build(KINDS[kind], weights={"path": str(root)}, attention={"use": "math"}).eval()
    edge = BOUNDARY[kind] * 1000
    # A mixed batch, out of order, with a sample exactly at the boundary (high noise, as diffusers decides).
    timesteps = [999.0, edge - 1e-3, edge, 12.5, edge + 40]
    inp = _inputs(kind, timesteps, seed=4)
    out = _ours(net, inp)
    high, low = experts
    for i, t in enumerate(timesteps):
        expert = high if t >= edge else low
        one = {k: None if v is None else v[i : i + 1] for k, v in inp.items()}
        assert rel_err(out[i : i + 1], run_reference(expert, **one)) <= 1e-5, (i, t)
    # And a batch that one expert owns whole goes straight to it.
    assert (
        rel_err(
            _ours(net, {**inp, "t": torch.full((5,), 300.0)}),
            run_reference(low, **{**inp, "t": torch.full((5,), 300.0)}),
        )
        <= 1e-5
    )


def test_sampling_with_our_network_follows_wan_pipeline_s_expert_choice(tmp_path: Path) -> None:
    """The same scheduler loop with our network as WanPipeline's with transformer / transformer_2, on our export."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    experts = make_experts("t2v", seed=5)
    net = build(
        KINDS["t2v"],
        weights={"path": str(write_diffusers_repository(tmp_path / "repo", experts, "t2v"))},
        attention={"use": "math"},
    ).eval()
    exported = net.export(tmp_path / "exported", format="diffusers")
    # The pipeline reads the export's model_index.json (boundary_ratio); the transformers are loaded strictly.
    transformers = {name: from_pretrained(exported / name) for name in ("transformer", "transformer_2")}
    absent = dict.fromkeys(("text_encoder", "tokenizer", "vae"))  # model_index.json names them absent
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline.from_pretrained(exported, scheduler=scheduler, **transformers, **absent)
    assert pipe.config.boundary_ratio == BOUNDARY["t2v"] and pipe.transformer_2 is not None
    g = torch.Generator().manual_seed(6)
    latents = torch.randn(1, 16, 2, 4, 4, generator=g)
    text = torch.randn(1, 7, 24, generator=g)
    steps = 6
    expected = pipe(
        prompt_embeds=text, guidance_scale=1.0, num_inference_steps=steps, latents=latents.clone(),
        height=32, width=32, num_frames=5, output_type="latent", return_dict=False,
    )[0]  # fmt: skip

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    assert {bool(t >= 875) for t in scheduler.timesteps} == {True, False}  # both experts take part
    x = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(1).float(), text), t, x, return_dict=False)[0]
    assert rel_err(x, expected) <= 1e-5


def test_one_expert_holds_only_its_weights_and_refuses_the_other_s_timesteps() -> None:
    net = build(KINDS["t2v"], size="tiny", expert="low_noise", attention={"use": "math"})
    assert net.experts == ("low_noise",) and all(k.startswith("low_noise.") for k in net.state_dict())
    both = build(KINDS["t2v"], size="tiny", attention={"use": "math"})
    assert {k.split(".", 1)[0] for k in both.state_dict()} == {"high_noise", "low_noise"}
    x, text = torch.randn(2, 16, 1, 4, 4), torch.randn(2, 3, 32)
    net(x, torch.tensor([10.0, 874.0]), text)
    with pytest.raises(ValueError, match=r"only the low_noise expert, which owns timesteps \[0, 875\); got 900"):
        net(x, torch.tensor([10.0, 900.0]), text)


def test_under_a_process_group_both_experts_run_and_every_parameter_gets_a_gradient() -> None:
    """A rank whose samples all belong to one expert still runs the other (on no samples): same collectives."""
    torch.manual_seed(0)
    net = build(KINDS["i2v"], size="tiny", attention={"use": "math"})
    x, t, text = torch.randn(2, 16, 1, 4, 4), torch.tensor([950.0, 990.0]), torch.randn(2, 3, 32)
    latent = torch.randn(2, 20, 1, 4, 4)
    alone = net(x, t, text, image_latent=latent)
    net.run_every_expert = True  # what a process group of several ranks switches on
    out = net(x, t, text, image_latent=latent)
    assert torch.equal(out, alone)
    out.square().sum().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() == 0 for k, g in grads.items() if k.startswith("low_noise."))
    assert any(g.abs().sum() > 0 for k, g in grads.items() if k.startswith("high_noise."))


def test_blocks_and_sequence_parallel_reach_both_experts() -> None:
    """What the parallel strategies use: every block once (shard / checkpoint each), the sequence split."""
    net = build(KINDS["t2v"], size="tiny", attention={"use": "math"})
    assert len(net.blocks) == 2 * net.arch.num_layers
    assert {id(b) for b in net.blocks} == {id(b) for e in net.experts for b in net.expert(e).blocks}
    assert not any(k.startswith("blocks.") for k in net.state_dict())
    marker = object()
    net.sequence_parallel = marker
    assert net.high_noise.sequence_parallel is marker and net.low_noise.sequence_parallel is marker
