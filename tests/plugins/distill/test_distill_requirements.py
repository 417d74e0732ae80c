"""Bad combinations of distillation components are recipe validation errors that name the fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from rcm_plugins.distill.requirements import Requirements
from rcm_plugins.distill.scm import ScmConfig

import rcm_registry as rr
from rcm_registry.recipe.validate import validate_recipe

RCM: dict[str, Any] = {
    "networks": {
        "teacher": {"use": "mlp", "dim": 2, "width": 32, "depth": 2, "num_classes": 25},
        "student": {"init_from": "teacher"},
        "fake_score": {"init_from": "teacher"},
    },
    "teacher_wrapper": {"use": "rectified_flow", "t_scale": 1000, "guidance": 2.0},
    "time": {"student": {"use": "lognormal"}, "critic": {"use": "uniform_shift", "shift": 5.0}},
    "rollout": {"use": "stochastic_backward", "max_steps": 4},
    "phases": {
        "student": {
            "every": 5,
            "losses": [{"use": "scm", "weight": 100, "tangent_warmup": 100}, {"use": "dmd", "start": 100}],
            "optimizer": {"use": "adamw", "lr": 1.0e-4},
        },
        "critic": {
            "trains": "fake_score",
            "losses": [{"use": "fake_score_dsm"}],
            "optimizer": {"use": "adamw", "lr": 1.0e-4},
        },
    },
    "data": {"use": "gaussian_mixture_2d"},
    "run": {"iterations": 10},
}


def _problems(recipe: dict[str, Any]) -> list[str]:
    try:
        validate_recipe(recipe, rr.registry())
    except rr.RecipeError as exc:
        return exc.problems
    return []


@pytest.fixture(autouse=True)
def _needs_components() -> None:
    # Built-in components: their absence is a broken install, a failure rather than a skip.
    reg = rr.registry()
    for kind, name in [("network", "mlp"), ("dataset", "gaussian_mixture_2d"), ("optimizer", "adamw")]:
        assert reg.find(kind, name) is not None, f"{kind} {name!r} not registered"


def test_rcm_recipe_is_valid() -> None:
    assert _problems(RCM) == []


def test_dmd_without_fake_score_network() -> None:
    recipe = copy.deepcopy(RCM)
    del recipe["networks"]["fake_score"]
    del recipe["phases"]["critic"]
    problems = _problems(recipe)
    line = next(p for p in problems if "(dmd)" in p)
    assert "fake_score" in line and "init_from: teacher" in line and "fake_score_dsm" in line


def test_fake_score_not_trained() -> None:
    recipe = copy.deepcopy(RCM)
    del recipe["phases"]["critic"]
    problems = _problems(recipe)
    assert any("(dmd)" in p and "trained by some phase" in p and "fake_score_dsm" in p for p in problems), problems


def test_missing_rollout_and_critic_time() -> None:
    recipe = copy.deepcopy(RCM)
    del recipe["rollout"]
    del recipe["time"]["critic"]
    problems = _problems(recipe)
    assert any("(dmd)" in p and "rollout: {use: stochastic_backward" in p for p in problems), problems
    assert any("(fake_score_dsm)" in p and "time.critic" in p for p in problems), problems


def test_rollout_requirements_are_merged() -> None:
    recipe = copy.deepcopy(RCM)
    recipe["rollout"] = {"use": "stochastic_backward", "time_sampler": "rollout_times"}
    problems = _problems(recipe)
    assert any("time.rollout_times" in p for p in problems), problems


def test_loss_in_the_wrong_phase() -> None:
    recipe = copy.deepcopy(RCM)
    recipe["phases"]["critic"]["losses"].append({"use": "scm"})
    problems = _problems(recipe)
    assert any("phases.critic.losses[1] (scm)" in p and "trains network 'student'" in p for p in problems), problems


def test_missing_teacher_wrapper() -> None:
    recipe = copy.deepcopy(RCM)
    del recipe["teacher_wrapper"]
    problems = _problems(recipe)
    assert any("(scm)" in p and "teacher_wrapper: {use: rectified_flow" in p for p in problems), problems


def test_scm_with_attention_lacking_jvp() -> None:
    assert rr.registry().find("network", "wan2.1-t2v") is not None, "wan2.1-t2v not registered"
    recipe = copy.deepcopy(RCM)
    recipe["networks"] = {
        "teacher": {"use": "wan2.1-t2v", "size": "1.3B", "attention": {"use": "sdpa"}},
        "student": {"init_from": "teacher"},
        "fake_score": {"init_from": "teacher"},
    }
    recipe["data"] = {"use": "random_latents", "shape": [16, 1, 8, 8], "text_length": 4, "text_dim": 4096}
    problems = _problems(recipe)
    line = next(p for p in problems if "(scm)" in p)
    assert "'student'" in line and "'jvp'" in line and "attention: sdpa" in line
    assert "triton_jvp" in line and "math" in line
    # The teacher and fake score are never differentiated forward: sdpa is fine for them.
    recipe["networks"]["student"]["attention"] = {"use": "math"}
    assert _problems(recipe) == []


def test_requirements_contract_without_a_recipe() -> None:
    req = ScmConfig(student_net="s").requirements()
    assert isinstance(req, Requirements)
    assert dict(req.networks) == {"teacher": (), "s": ("jvp",)}
    problems = req.problems(
        networks={"teacher": set(), "s": set()}, time=[], rollout=False, teacher_wrapper=True, trains="s"
    )
    assert len(problems) == 2
    assert "'jvp'" in problems[0] and "time.student" in problems[1]


def test_components_registered() -> None:
    reg = rr.registry()
    assert not [f for f in reg.failures if f.name == "distill"]
    expected = {
        "teacher": {"rectified_flow", "edm", "vp_eps"},
        "loss": {"scm", "dcm", "dmd", "fake_score_dsm"},
        "rollout": {"stochastic_backward", "fixed_timesteps"},
        "sampler": {"trigflow_multistep"},
    }
    for kind, names in expected.items():
        assert names <= set(reg.names(kind)), kind
    # Built from YAML-shaped config, as a recipe would.
    assert reg.build("loss", "scm", weight=100, tangent_warmup=1000).config.tangent_warmup == 1000
    assert reg.build("sampler", "trigflow_multistep", steps=2).config.times()[1] == 1.5
