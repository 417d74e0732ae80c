"""Wan2.2 network behaviour: sizes and config rules, one-expert recipes, the TI2V-5B against diffusers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from _wan_helpers import diffusers_kwargs, make_reference
from network_testkit import NetworkChecks, build, rel_err
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from rcm_plugins.wan.experts import WanExperts
from rcm_plugins.wan.model import WanArch
from rcm_plugins.wan.wan22_config import _A14B, _TI2V

from rcm_registry import registry
from rcm_registry.errors import RecipeError
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[3]


class TestWan22Network(NetworkChecks):
    kinds = ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b")
    timestep_scale = 1000.0
    # Two Wan2.1-14B-shaped experts ("A14B": 14B active per step, about 27B in all).
    published: ClassVar[dict[str, tuple[float, float]]] = {"a14b": (28.0e9, 29.0e9)}
    bad_size = "14B"
    bad_format = "safetensors"
    inconsistent: ClassVar[tuple[dict[str, Any], str]] = (
        {"dim": 100, "num_heads": 3, "ffn_dim": 8, "num_layers": 1},
        "not divisible",
    )

    def published_network(self, size: str) -> torch.nn.Module:
        return WanExperts(WanArch(**_A14B[size]), attention=None, boundary=0.875)

    def test_activation_checkpointing_gives_the_same_gradients(self) -> None:
        """As the shared check, on a batch that reaches both experts (one sample each), so every parameter
        has a gradient to compare."""
        torch.manual_seed(0)
        plain = build(self.kinds[0], size="tiny", attention={"use": "math"})
        ckpt = build(self.kinds[0], size="tiny", attention={"use": "math"}, activation_checkpointing=True)
        ckpt.load_state_dict(plain.state_dict())
        x, t = torch.randn(2, 16, 2, 4, 4), torch.tensor([950.0, 200.0])
        text = torch.randn(2, 3, plain.arch.text_dim)
        grads = []
        for net in (plain, ckpt):
            net.train()
            net(x, t, text).square().sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert rel_err(grads[1], grads[0]) < 1e-6


def test_published_5b() -> None:
    with torch.device("meta"):
        net = build("wan2.2-ti2v-5b", size="5b", attention={"use": "math"})
    assert 4.9e9 < sum(p.numel() for p in net.parameters()) < 5.1e9
    assert (net.arch.in_channels, net.arch.out_channels, net.arch.dim) == (48, 48, 3072)
    assert _TI2V["5b"]["num_layers"] == 30


def test_boundary_and_conditions_per_kind() -> None:
    t2v = build("wan2.2-t2v-a14b", size="tiny", attention={"use": "math"})
    i2v = build("wan2.2-i2v-a14b", size="tiny", boundary=0.8, attention={"use": "math"})
    assert (t2v.boundary, i2v.boundary, i2v.arch.in_channels, i2v.arch.image_dim) == (0.875, 0.8, 36, None)
    reg = registry()
    i2v_config = reg.find("network", "wan2.2-i2v-a14b").config(size="tiny")
    assert i2v_config.boundary_ratio() == 0.9
    assert i2v_config.condition_shapes((16, 5, 8, 8)) == {"image_latent": (20, 5, 8, 8)}
    ti2v_config = reg.find("network", "wan2.2-ti2v-5b").config
    assert ti2v_config(size="tiny").condition_shapes((48, 5, 8, 8)) == {}
    assert ti2v_config(size="tiny", first_frame=True).condition_shapes((48, 5, 8, 8)) == {"first_frame": (48, 1, 8, 8)}
    with pytest.raises(Exception, match=r"boundary: must be in \(0\.0, 1\.0\)"):
        build("wan2.2-t2v-a14b", size="tiny", boundary=1.0)
    with pytest.raises(Exception, match="expert: expected one of"):
        build("wan2.2-t2v-a14b", size="tiny", expert="middle")


def _validated(recipe: Path, *overrides: str) -> Any:
    return validate_recipe(load_recipe(recipe, list(overrides)), registry(), str(recipe), open_files=False)


def test_one_expert_recipe_keeps_every_evaluated_time_in_the_expert_s_interval() -> None:
    """The network config's check_recipe: silent for the shipped one-expert recipe, one line per offender."""
    recipe = ROOT / "recipes/wan2.2/t2v_a14b_tiny_high_noise_rcm.yaml"
    production = ROOT / "recipes/wan2.2/t2v_a14b_high_noise_rcm.yaml"
    paths = ("networks.teacher.weights.path", "data.path", "codecs.text.path", "codecs.vae.path")
    for good in (_validated(recipe), _validated(production, *(f"{p}=/placeholder" for p in paths))):
        for role, entry in good.networks.items():
            assert entry.spec.config.expert == "high_noise", role
            assert entry.spec.config.check_recipe(good, f"networks.{role}") == []
    assert (
        _validated(ROOT / "recipes/wan2.2/t2v_a14b_tiny_rcm.yaml")
        .networks["teacher"]
        .spec.config.check_recipe(good, "networks.teacher")
        == []
    )  # both experts: any time is fine

    # Validation asks every network config, so a recipe that breaks the interval never runs.
    with pytest.raises(RecipeError) as info:
        _validated(
            recipe,
            "time.student={use: lognormal, mean: 0.7, std: 1.6}",
            "time.critic={use: uniform, low: 1.0, high: 1.5}",
            "rollout.sigma_max=5.0",
            "sample.mid_times=[1.5, 1.2, 1.0]",
        )
    head = "networks.student (wan2.2-t2v-a14b): "
    problems = [p.removeprefix(head) for p in info.value.problems if p.startswith(head)]
    text = "\n".join(problems)
    assert len(problems) == 4, text
    edge = f"{math.atan(7.0):.4f}"
    owned = f"the high_noise expert alone owns TrigFlow times [{edge}, π/2]"
    assert f"time.student (lognormal) draws any t in (0, π/2), and {owned}" in text
    assert "time.critic (uniform) draws t in [1.0, 1.5]" in text
    assert f"rollout (stochastic_backward) starts at t = {math.atan(5.0):.4f}" in text
    assert "sample (trigflow_multistep) evaluates the network at t = " in text

    with pytest.raises(RecipeError) as info:
        _validated(recipe, "networks.teacher.expert=low_noise")
    head = "networks.teacher (wan2.2-t2v-a14b): "
    problems = [p for p in info.value.problems if p.startswith(head)]
    assert len(problems) == 4 and all(f"[0, {edge})" in p for p in problems)


def test_weights_of_the_other_kind_are_refused(tmp_path: Path) -> None:
    from _wan22_helpers import make_experts, write_diffusers_repository

    root = write_diffusers_repository(tmp_path / "repo", make_experts("t2v", seed=1), "t2v")
    with pytest.raises(Exception, match=r"wan2\.2-t2v-a14b, not wan2\.2-i2v-a14b"):
        build("wan2.2-i2v-a14b", weights={"path": str(root)}, boundary=0.875)


# -- TI2V-5B ------------------------------------------------------------------------------------------------


def _ti2v_reference(seed: int) -> Any:
    return make_reference(diffusers_kwargs(heads=2, head_dim=12, layers=2, in_channels=48, out_channels=48), seed)


def _ti2v_inputs(seed: int, text_dim: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(2, 48, 3, 4, 6, generator=g),
        "t": torch.tensor([640.0, 90.0]),
        "text": torch.randn(2, 7, text_dim, generator=g),
        "frame": torch.randn(2, 48, 1, 4, 6, generator=g),
    }


def test_ti2v_matches_diffusers_with_expanded_timesteps(tmp_path: Path) -> None:
    """Text-to-video as WanTransformer3DModel; with a first frame, as diffusers' expand_timesteps pipelines call it."""
    ref = _ti2v_reference(seed=2)
    ref.save_pretrained(tmp_path / "repo" / "transformer")
    (tmp_path / "repo" / "model_index.json").write_text('{"_class_name": "WanPipeline", "expand_timesteps": true}')
    net = build("wan2.2-ti2v-5b", weights={"path": str(tmp_path / "repo")}, attention={"use": "math"}).eval()
    i = _ti2v_inputs(seed=3)
    with torch.no_grad():
        expected = ref(i["x"], i["t"], i["text"], return_dict=False)[0]
        assert rel_err(net(i["x"], i["t"], i["text"]), expected) <= 1e-5
        # diffusers' I2V: the first latent frame replaced by the condition, per-token timesteps 0 on its tokens.
        mask = torch.ones(1, 1, 3, 4, 6)
        mask[:, :, 0] = 0
        model_input = (1 - mask) * i["frame"] + mask * i["x"]
        per_token = (mask[0, 0, :, ::2, ::2].flatten()[None] * i["t"][:, None]).contiguous()
        expected = ref(model_input, per_token, i["text"], return_dict=False)[0]
        out = net(i["x"], i["t"], i["text"], first_frame=i["frame"])
    assert rel_err(out[:, :, 1:], expected[:, :, 1:]) <= 1e-5
    # On the first frame: the velocity that lands on it, not diffusers' (discarded) prediction.
    s = (i["t"] / 1000).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(out[:, :, :1], (i["x"][:, :, :1] - i["frame"]) / s)


def test_ti2v_teacher_wrapper_keeps_the_first_frame_at_every_time() -> None:
    """Read in TrigFlow (what every loss, rollout and sampler does), x0's first frame is the condition."""
    net = build("wan2.2-ti2v-5b", size="tiny", first_frame=True, attention={"use": "math"}).double().eval()
    i = {k: v.double() for k, v in _ti2v_inputs(seed=4, text_dim=net.arch.text_dim).items()}
    wrapper = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=1000.0))
    for t in (1.55, 0.9, 0.05):
        tt = torch.full((2,), t, dtype=torch.float64)
        with torch.no_grad():
            x0, _ = wrapper.denoise(net, i["x"], tt, {"text": i["text"], "first_frame": i["frame"]})
        torch.testing.assert_close(x0[:, :, :1], i["frame"], rtol=1e-10, atol=1e-10)
        assert not torch.allclose(x0[:, :, 1:], i["x"][:, :, 1:])


def test_ti2v_native_checkpoint_round_trips_with_its_model_type(tmp_path: Path) -> None:
    import json

    torch.manual_seed(5)
    net = build("wan2.2-ti2v-5b", size="tiny", attention={"use": "math"}).eval()
    net.export(tmp_path / "native", format="native")
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "ti2v"
    again = build("wan2.2-ti2v-5b", weights={"path": str(tmp_path / "native")}, attention={"use": "math"})
    assert again.arch == net.arch
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True))
    with pytest.raises(Exception, match=r"unsupported Wan2\.1 model_type 'ti2v'"):
        build("wan2.1-t2v", weights={"path": str(tmp_path / "native")})
