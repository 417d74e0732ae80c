"""CUDA-graph replay of the sampled network (``inference.cuda_graphs``, ``--cuda-graphs``): refused clearly where
it cannot run (no CUDA device, with ``--compile``); on a GPU, every replayed call equals the eager call on the
same inputs, with the Triton attention kernels inside the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

import rcm_registry as rr
from rcm_registry.engine.cuda_graphs import MAX_CAPTURES, GraphedNetwork
from rcm_registry.engine.inference import InferenceOptions, apply_after_loading, check_device, inference_options
from rcm_registry.engine.trainer import autocast
from rcm_registry.errors import UserError
from rcm_registry.generate import compile_network
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.sections import Recipe
from rcm_registry.recipe.validate import validate_recipe
from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "recipes/quickstart/teacher.yaml"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def recipe(*overrides: str) -> Recipe:
    return validate_recipe(load_recipe(QUICKSTART, list(overrides)), rr.registry(), str(QUICKSTART))


def test_the_recipe_section_and_the_flag_set_the_option() -> None:
    assert not inference_options(recipe()).cuda_graphs
    on = inference_options(recipe("inference.cuda_graphs=true"))
    assert on.cuda_graphs and on.describe() == "default precision, cuda graphs"
    assert not inference_options(recipe("inference.cuda_graphs=true"), cuda_graphs=False).cuda_graphs
    assert inference_options(recipe(), cuda_graphs=True).cuda_graphs


def test_a_cpu_device_is_refused_before_loading() -> None:
    with pytest.raises(UserError, match=r"need a CUDA device.*samples on cpu"):
        check_device(InferenceOptions(cuda_graphs=True), torch.device("cpu"))
    check_device(InferenceOptions(), torch.device("cpu"))  # without the option, nothing to refuse


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_the_wrapper_refuses_a_machine_without_cuda() -> None:
    with pytest.raises(UserError, match="CUDA graphs need a CUDA device"):
        apply_after_loading(nn.Linear(2, 2), InferenceOptions(cuda_graphs=True))


def test_compile_and_cuda_graphs_together_are_refused() -> None:
    class _Run:
        inference = InferenceOptions(cuda_graphs=True)
        net = nn.Linear(2, 2)

    with pytest.raises(UserError, match=r"--compile with inference\.cuda_graphs"):
        compile_network(_Run())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def quickstart_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny runs, one with ``inference.cuda_graphs`` in its recipe (training does not read it)."""
    runs = {}
    for label, extra in (("plain", []), ("recipe", ["--set", "inference.cuda_graphs=true"])):
        out = tmp_path_factory.mktemp("graphs") / label
        done = run_cli("run", str(QUICKSTART), "--out", str(out), "--no-progress", "--set", "run.iterations=2", *extra)
        assert done.code == 0, done.err
        runs[label] = out
    return runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
@pytest.mark.parametrize(("run", "flags"), [("plain", ["--cuda-graphs"]), ("recipe", [])])
def test_rcm_sample_refuses_cuda_graphs_on_the_cpu(
    quickstart_runs: dict[str, Path], tmp_path: Path, run: str, flags: list[str]
) -> None:
    out = tmp_path / "samples.safetensors"
    done = run_cli("sample", str(quickstart_runs[run]), "--num", "4", "--out", str(out), "--device", "cpu", *flags)
    # refused before the weights are read (check_device), not when the wrapper is built
    assert done.code == 2 and "CUDA graphs need a CUDA device, and this network samples on cpu" in done.err, done.err
    assert not out.exists()


def test_without_the_option_the_same_run_samples(quickstart_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "samples.safetensors"
    done = run_cli("sample", str(quickstart_runs["plain"]), "--num", "4", "--out", str(out), "--device", "cpu")
    assert done.code == 0 and out.exists(), done.err


# -- the wrapper's logic, on the CPU with a stand-in for the capture ------------------------------------


class _EagerCapturer:
    """A CUDA graph's semantics without CUDA: the replay rewrites the output buffers of the one captured call
    from the static inputs' current values, so a wrapper that forgot to copy an input, or handed out the
    buffers themselves, returns stale or overwritten results here as it would on a GPU."""

    device_type = "cpu"

    def __init__(self) -> None:
        self.captured = 0

    def check_available(self) -> None:
        pass

    def capture(self, call: Any, device: torch.device, warmup: int) -> tuple[Any, Any]:
        self.captured += 1
        output = call()

        def replay() -> None:
            for buffer, new in zip(pytree.tree_leaves(output), pytree.tree_leaves(call()), strict=True):
                buffer.copy_(new)

        return replay, output


def _cpu_inputs(net: nn.Module, seed: int, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    arch = net.arch
    return (
        torch.randn(batch, arch.in_channels, 2, 8, 8, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, 7, arch.text_dim, generator=g),
    )


def test_each_call_signature_is_captured_once_and_replayed_with_the_new_inputs() -> None:
    torch.manual_seed(0)
    eager = rr.registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "sdpa"}).eval()
    capturer = _EagerCapturer()
    graphed = GraphedNetwork(eager, capturer=capturer)
    assert graphed.arch is eager.arch  # what the wrapper does not answer, the network does
    results = []
    with torch.no_grad():
        for seed in (1, 2, 3):
            inputs = _cpu_inputs(eager, seed)
            results.append((graphed(*inputs), eager(*inputs)))
        assert graphed.captures == capturer.captured == 1
        small = _cpu_inputs(eager, 4, batch=1)
        results.append((graphed(*small), eager(*small)))
        results.append((graphed(*small, image=None), eager(*small)))  # another argument: another signature
    assert graphed.captures == capturer.captured == 3
    for replayed, direct in results:  # earlier results survive later replays
        assert torch.equal(replayed, direct)
    assert not torch.equal(results[0][0], results[1][0])


def test_calls_that_cannot_be_replayed_are_refused() -> None:
    graphed = GraphedNetwork(nn.Linear(3, 3), capturer=_EagerCapturer())
    with pytest.raises(UserError, match="autograd on"):
        graphed(torch.ones(2, 3))
    with torch.no_grad():
        with pytest.raises(UserError, match=r"argument 1 .*\(set\) is neither a tensor nor hashable"):
            GraphedNetwork(_TakesAnything(), capturer=_EagerCapturer())(torch.ones(1), {1})
        for n in range(1, MAX_CAPTURES + 1):
            graphed(torch.ones(n, 3))
        with pytest.raises(UserError, match=f"more than {MAX_CAPTURES} different argument shapes"):
            graphed(torch.ones(MAX_CAPTURES + 1, 3))


class _TakesAnything(nn.Module):
    def forward(self, x: Tensor, anything: object) -> Tensor:
        return x


# -- on a GPU -------------------------------------------------------------------------------------------


class _Syncing(nn.Module):
    """A network whose forward reads a value on the host: not capturable."""

    def forward(self, x: Tensor) -> Tensor:
        return x * float(x.sum())


def _network(name: str, attention: str) -> tuple[nn.Module, nn.Module]:
    """The tiny network eager and graphed, with the same fp32 weights, on the GPU."""
    torch.manual_seed(0)
    eager = rr.registry().build("network", name, size="tiny", attention={"use": attention})
    eager.to("cuda").eval().requires_grad_(False)
    return eager, apply_after_loading(eager, InferenceOptions(cuda_graphs=True))


def _inputs(net: nn.Module, seed: int, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    arch = net.arch
    x = torch.randn(batch, arch.in_channels, 2, 8, 8, device="cuda", generator=g)
    t = torch.rand(batch, device="cuda", generator=g)
    text = torch.randn(batch, 7, arch.text_dim, device="cuda", generator=g)
    return x, t, text


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("attention", ["sdpa", "int8_sage"])
@pytest.mark.parametrize("name", ["wan2.1-t2v", "cosmos-predict2-t2i"])
def test_replayed_calls_equal_eager_calls(name: str, attention: str) -> None:
    eager, graphed = _network(name, attention)
    results = []
    with torch.no_grad(), autocast(torch.device("cuda"), "bf16"):
        for seed in (1, 2, 3):  # the first call captures, the others replay with new inputs
            inputs = _inputs(eager, seed)
            results.append((graphed(*inputs), eager(*inputs)))
        assert graphed.captures == 1
        other = _inputs(eager, 4, batch=1)  # a new shape: a second capture
        results.append((graphed(*other), eager(*other)))
    assert graphed.captures == 2
    for replayed, direct in results:  # earlier outputs were not overwritten by later replays
        assert replayed.shape == direct.shape
        assert torch.equal(replayed, direct), (replayed - direct).abs().max()
    assert not torch.equal(results[0][0], results[1][0])


@pytest.mark.gpu
@needs_cuda
def test_calls_a_graph_cannot_take_are_refused() -> None:
    eager, graphed = _network("wan2.1-t2v", "sdpa")
    inputs = _inputs(eager, 1)
    with pytest.raises(UserError, match="autograd on"):
        graphed(*inputs)
    with torch.no_grad(), pytest.raises(UserError, match=r"argument 0 .* is on cpu"):
        graphed(inputs[0].cpu(), *inputs[1:])
    syncing = apply_after_loading(_Syncing(), InferenceOptions(cuda_graphs=True))
    with torch.no_grad(), pytest.raises(UserError, match="synchronises with the host"):
        syncing(torch.ones(3, device="cuda"))
    # Refused before a capture began, the process is left usable: a failed capture leaves the CUDA
    # generator registered with it, and every later draw raises.
    assert torch.cuda.get_sync_debug_mode() == 0
    assert torch.randn(3, device="cuda").isfinite().all()
