"""Checks that every network family's tests run the same way, as base classes a family fills in.

In the style of diffusers' shared scheduler test base class: a family's test module subclasses
:class:`ExportChecks`, :class:`JvpChecks` or :class:`NetworkChecks` as ``Test...``, sets the class
attributes and implements the few methods that differ (how to make inputs, how to call diffusers'
model); pytest collects the inherited tests once per family. Only checks whose logic is the same for
every family live here; a family's own checks stay in its test module.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import pytest
import torch
from rcm_plugins.common import weights
from torch import Tensor, nn
from torch.autograd import forward_ad

import rcm_registry as rr
from rcm_registry.errors import CheckpointError, RecipeError
from rcm_registry.jvp import jvp
from rcm_registry.testing.fixtures import rel_err

M = TypeVar("M", bound=nn.Module)


def build(name: str, **config: Any) -> Any:
    """The registered network ``name`` built from a recipe-shaped config."""
    return rr.registry().build("network", name, **config)


def random_reference(model_class: type[M], kwargs: dict[str, Any], seed: int) -> M:
    """A diffusers model whose every parameter is random (norm weights and tables too, not just ones/zeros),
    so that a parity check cannot pass on a parameter that is never read."""
    torch.manual_seed(seed)
    model = model_class(**kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def trained_like(name: str, seed: int, **overrides: Any) -> Any:
    """A tiny network with every parameter moved off its init (as after training)."""
    torch.manual_seed(seed)
    net = build(name, size="tiny", attention={"use": "math"}, **overrides).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


class _PerKind:
    """A test method with a ``name`` argument runs once for each of the family's two networks."""

    #: The family's two network names: the plain kind first (T2V, T2I), then the conditioned one (I2V, V2W).
    kinds: ClassVar[tuple[str, str]]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", self.kinds)


class ExportChecks(_PerKind):
    """Exporting a family's network: diffusers and native directories, loadable and complete or absent."""

    #: The family's checkpoint module (its ``export``).
    checkpoint: ClassVar[ModuleType]
    #: Overrides of the tiny size for the diffusers export, so that diffusers computes the same function.
    diffusers_overrides: ClassVar[dict[str, Any]] = {}
    #: ``_class_name`` of the plain kind's native config.json.
    native_class: ClassVar[str]
    #: What the conditioned kind's native config.json must say, besides its width (``width_key``).
    native_config: ClassVar[dict[str, Any]]
    width_key: ClassVar[str]
    #: A native key only the conditioned kind has, and one whose dtype the export must set.
    native_key: ClassVar[str]
    cast_key: ClassVar[str]
    #: Dropping the keys under this prefix must be reported, naming ``missing_key`` (a regex).
    head_prefix: ClassVar[str]
    missing_key: ClassVar[str]

    def inputs(self, net: Any, seed: int) -> dict[str, Tensor]:
        """Random inputs the network and diffusers' model both take."""
        raise NotImplementedError

    def ours(self, net: Any, inputs: dict[str, Tensor]) -> Tensor:
        """Our network's output, without grad."""
        raise NotImplementedError

    def diffusers_output(self, directory: Path, net: Any, inputs: dict[str, Tensor]) -> Tensor:
        """diffusers' model loaded strictly from ``directory``, run on ``inputs`` without grad."""
        raise NotImplementedError

    @pytest.mark.parametrize("shard", [False, True])
    def test_diffusers_export_loads_in_diffusers(self, name: str, shard: bool, tmp_path: Path) -> None:
        net = trained_like(name, seed=11, **self.diffusers_overrides)
        out = tmp_path / "student"
        self.checkpoint.export(
            net, out, format="diffusers", max_shard_bytes=20_000 if shard else weights.DEFAULT_MAX_SHARD_BYTES
        )
        assert (out / "diffusion_pytorch_model.safetensors.index.json").exists() == shard
        i = self.inputs(net, seed=12)
        assert rel_err(self.ours(net, i), self.diffusers_output(out, net, i)) <= 1e-5
        # And back into ours from the exported directory, architecture from its config.json.
        again = build(name, weights={"path": str(out)}, attention={"use": "math"}).eval()
        assert again.arch == net.arch
        assert rel_err(self.ours(again, i), self.ours(net, i)) == 0.0

    def test_native_export_round_trips_and_uses_native_names(self, tmp_path: Path) -> None:
        name = self.kinds[1]
        net = trained_like(name, seed=13)
        out = tmp_path / "native"
        net.export(out, format="native", dtype=torch.float64)
        config = json.loads((out / "config.json").read_text())
        assert {k: config[k] for k in self.native_config} == self.native_config
        assert config[self.width_key] == net.arch.dim
        stored = weights.read_state_dict(out)
        assert self.native_key in stored and stored[self.cast_key].dtype == torch.float64
        again = build(name, weights={"path": str(out)}, attention={"use": "math"}).eval()
        assert again.arch == net.arch
        i = self.inputs(net, seed=14)
        assert rel_err(self.ours(again, i), self.ours(net, i)) <= 1e-6

    def test_export_of_a_state_dict_needs_and_checks_the_arch(self, tmp_path: Path) -> None:
        net = trained_like(self.kinds[0], seed=15)
        state = net.state_dict()
        with pytest.raises(ValueError, match="arch"):
            self.checkpoint.export(state, tmp_path / "a")
        partial = {k: v for k, v in state.items() if not k.startswith(self.head_prefix)}
        with pytest.raises(CheckpointError, match=self.missing_key):
            self.checkpoint.export(partial, tmp_path / "b", arch=net.arch)
        assert not (tmp_path / "b").exists()
        self.checkpoint.export(state, tmp_path / "c", arch=net.arch)
        assert (tmp_path / "c" / "config.json").exists()

    def test_export_is_all_or_nothing(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        net = trained_like(self.kinds[0], seed=16)
        out = tmp_path / "student"

        def fail(*_: object, **__: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(weights, "write_config", fail)
        with pytest.raises(OSError, match="disk full"):
            self.checkpoint.export(net, out)
        assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory is left
        monkeypatch.undo()

        self.checkpoint.export(net, out)
        with pytest.raises(CheckpointError, match="already exists"):
            self.checkpoint.export(net, out)
        net.export(out, format="native", overwrite=True)
        assert json.loads((out / "config.json").read_text())["_class_name"] == self.native_class
        assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


class JvpChecks(_PerKind):
    """Forward-mode AD through a family's network: forward_ad duals and torch.func.jvp agree, and are right."""

    #: Timesteps in the network's units are ``rand() * timestep_scale``.
    timestep_scale: ClassVar[float]
    #: Central-difference step for the time tangent alone.
    time_step: ClassVar[float]

    def setup(self, name: str, seed: int) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
        """A float64 tiny network, its keyword inputs (x and timestep first) and a tangent for each."""
        raise NotImplementedError

    def test_forward_ad_matches_torch_func_jvp_and_finite_differences(self, name: str) -> None:
        net, primals, tangents = self.setup(name, seed=7)
        keys = list(primals)

        def f(*args: Tensor) -> Tensor:
            return net(**dict(zip(keys, args, strict=True)))

        args = tuple(primals[k] for k in keys)
        dirs = tuple(tangents[k] for k in keys)
        with torch.no_grad():
            out = f(*args)
        func_out, func_tangent = torch.func.jvp(f, args, dirs)

        with torch.no_grad(), forward_ad.dual_level():
            dual = f(*(forward_ad.make_dual(a, d) for a, d in zip(args, dirs, strict=True)))
            fw_out, fw_tangent = forward_ad.unpack_dual(dual)
        _, eng_tangent = jvp(f, args, dirs)

        assert fw_tangent is not None and fw_tangent.abs().max() > 0
        assert rel_err(fw_out, out) <= 1e-14 and rel_err(func_out, out) <= 1e-14
        assert rel_err(fw_tangent, func_tangent) <= 1e-10
        assert rel_err(eng_tangent, func_tangent) <= 1e-10
        # Both AD modes could drop the same tangent path (a stray detach): central differences cannot.
        h = 1e-5
        with torch.no_grad():
            plus = f(*(a + h * d for a, d in zip(args, dirs, strict=True)))
            minus = f(*(a - h * d for a, d in zip(args, dirs, strict=True)))
        assert rel_err(fw_tangent, (plus - minus) / (2 * h)) <= 1e-6

    def test_time_tangent_alone_is_right(self) -> None:
        """The time path (sinusoid, MLP or norm, modulation) carries its own tangent."""
        net, primals, _ = self.setup(self.kinds[0], seed=8)
        dt = torch.ones_like(primals["timestep"])

        def f(t: Tensor) -> Tensor:
            return net(primals["x"], t, primals["text"])

        _, tangent = torch.func.jvp(f, (primals["timestep"],), (dt,))
        h = self.time_step
        with torch.no_grad():
            fd = (f(primals["timestep"] + h) - f(primals["timestep"] - h)) / (2 * h)
        assert tangent.abs().max() > 0
        assert rel_err(tangent, fd) <= 1e-6

    def test_sdpa_backend_refuses_dual_tensors_through_the_network(self) -> None:
        """The network reaches attention only through its configured backend: sdpa's dual check fires."""
        net = build(self.kinds[0], size="tiny", attention={"use": "sdpa"}).eval()
        x, t = torch.randn(1, 16, 1, 4, 4), torch.rand(1) * self.timestep_scale
        text = torch.randn(1, 3, net.arch.text_dim)
        with pytest.raises(Exception, match="forward-mode AD"):
            jvp(lambda x_: net(x_, t, text), (x,), (torch.randn_like(x),))


class NetworkChecks(_PerKind):
    """A family's network behaviour that the shared config rules and layers decide."""

    #: Timesteps in the network's units are ``rand() * timestep_scale``.
    timestep_scale: ClassVar[float]
    #: Published size → bounds of its parameter count.
    published: ClassVar[dict[str, tuple[float, float]]]
    #: A size name the family does not have, and a weights format that does not exist.
    bad_size: ClassVar[str]
    bad_format: ClassVar[str]
    #: Architecture fields that contradict each other, and the error they must give (a regex).
    inconsistent: ClassVar[tuple[dict[str, Any], str]]

    def published_network(self, size: str) -> nn.Module:
        """The plain kind's network of a published size, built on the meta device."""
        raise NotImplementedError

    def test_published_sizes(self) -> None:
        """Parameter counts of the published architectures, built on the meta device."""
        for size, (low, high) in self.published.items():
            with torch.device("meta"):
                net = self.published_network(size)
            assert low < sum(p.numel() for p in net.parameters()) < high, size

    def test_config_validation_reports_problems(self) -> None:
        name = self.kinds[0]
        with pytest.raises(RecipeError, match="give `size`"):
            build(name)
        with pytest.raises(RecipeError) as info:
            build(name, size=self.bad_size, num_heads=0, weights={"format": self.bad_format})
        text = str(info.value)
        for problem in ("size: expected one of", "num_heads: must be > 0", "weights.path: required", "weights.format"):
            assert problem in text
        fields, match = self.inconsistent
        with pytest.raises(RecipeError, match=match):
            build(name, **fields)
        with pytest.raises(RecipeError, match="unknown attention"):
            build(name, size="tiny", attention={"use": "flash9"})

    @pytest.mark.parametrize("mode", [True, "block", "selective", "auto"])
    def test_activation_checkpointing_gives_the_same_gradients(self, mode: object) -> None:
        """Every checkpointing mode (auto: none on the CPU) gives the gradients of none, in float64."""
        torch.manual_seed(0)
        plain = build(self.kinds[0], size="tiny", attention={"use": "math"}).double()
        ckpt = build(self.kinds[0], size="tiny", attention={"use": "math"}, activation_checkpointing=mode).double()
        ckpt.load_state_dict(plain.state_dict())
        x, t = (
            torch.randn(1, 16, 2, 4, 4, dtype=torch.float64),
            torch.rand(1, dtype=torch.float64) * self.timestep_scale,
        )
        text = torch.randn(1, 3, plain.arch.text_dim, dtype=torch.float64)
        grads = []
        for net in (plain, ckpt):
            net.train()
            net(x, t, text).square().sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert grads[0].norm() > 0 and rel_err(grads[1], grads[0]) < 1e-12
