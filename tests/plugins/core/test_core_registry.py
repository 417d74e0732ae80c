"""Every core component is registered, builds from YAML-shaped config, and rejects bad config."""

from __future__ import annotations

import pytest
import torch

import rcm_registry as rr

EXPECTED = {
    "schedule": {"trigflow", "rectified_flow"},
    "time_sampler": {"lognormal", "uniform_shift", "uniform"},
    "loss": {"flow_matching"},
    "optimizer": {"adamw"},
    "ema": {"power", "constant"},
    "dataset": {"gaussian_mixture_2d"},
    "network": {"mlp"},
    "sampler": {"euler"},
    "metric": {"mode_coverage", "high_quality_rate", "sliced_wasserstein"},
}


@pytest.fixture(scope="module")
def registry() -> rr.Registry:
    return rr.registry()


def test_registered_by_the_core_plugin(registry: rr.Registry) -> None:
    for kind, names in EXPECTED.items():
        assert names <= set(registry.names(kind)), kind
        for name in names:
            assert registry.origin(kind, name).name == "core"
            assert registry.get(kind, name).summary


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in EXPECTED.items() for n in sorted(names)])
def test_builds_with_defaults(registry: rr.Registry, kind: str, name: str) -> None:
    config = {"lr": 1e-3} if name == "adamw" else {}
    assert registry.build(kind, name, **config) is not None


def test_adamw(registry: rr.Registry) -> None:
    make = registry.build("optimizer", "adamw", lr="3e-4", betas=[0.0, 0.99], weight_decay=0.01, eps=1e-6)
    param = torch.nn.Parameter(torch.ones(3))
    opt = make([param])
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4 and group["betas"] == (0.0, 0.99)
    assert group["weight_decay"] == 0.01 and group["eps"] == 1e-6
    param.sum().backward()
    opt.step()
    assert not torch.equal(param.detach(), torch.ones(3))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "lr: required key missing"),
        ({"lr": -1e-3}, "lr: must be > 0"),
        ({"lr": 0.0}, "lr: must be > 0"),
        ({"lr": "abc"}, "lr: expected float, got 'abc'"),
        ({"lr": 1e-3, "betas": [0.9]}, "betas: expected a list of 2 values"),
        ({"lr": 1e-3, "betas": [0.9, 1.0]}, "betas: each beta must be in [0, 1)"),
        ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay: must be >= 0"),
        ({"lr": 1e-3, "eps": 0.0}, "eps: must be > 0"),
    ],
)
def test_adamw_bad_configs(registry: rr.Registry, config: dict, fragment: str) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("optimizer", "adamw", **config)
    assert fragment in str(info.value)


def test_all_problems_reported_together(registry: rr.Registry) -> None:
    with pytest.raises(rr.RecipeError) as info:
        registry.build("dataset", "gaussian_mixture_2d", std=-1.0, layout="cube", radius="big")
    assert len(info.value.problems) == 3
