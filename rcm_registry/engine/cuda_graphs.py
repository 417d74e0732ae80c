"""CUDA-graph replay of the sampled network: each call signature captured once, every later call replayed.

A few-step student calls its network a handful of times with the same shapes. Where the host's launching
sets the pace rather than the GPU's arithmetic (small latents, many small kernels, the Python launchers of
the Triton kernels), replaying one captured graph per call signature removes that cost. Unlike
``torch.compile``'s ``reduce-overhead`` mode it captures the hand-written Triton kernels too (the INT8
attention backend and the FP8 linears are graph breaks for the compiler), and it compiles nothing: the
first call of a signature runs the network eagerly on a side stream (a warm-up, which also fills the
network's caches and compiles the Triton kernels, then one call with torch's sync debug mode at "error"),
then captures it; every later call replays.

What a captured call must satisfy (:class:`UserError` names the call otherwise): no host synchronisation
(``.item()``, data-dependent shapes) and no host-to-device copies inside the network's forward, both found
by the checked eager call, so that their refusal leaves the process usable (a failed capture does not).
Non-tensor arguments are part of the signature: a new value is a new capture. The output is copied out of
the graph's buffers, so a result stays valid when the next call replays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from rcm_registry.errors import UserError

#: How many call signatures one network may capture: a sampler calls with one or two (CFG with a
#: differently shaped null condition); more means shapes change from call to call, where replay cannot help
#: and every capture keeps its own activation memory.
MAX_CAPTURES = 8


@attrs.define
class _Capture:
    replay: Callable[[], None]
    #: The buffers the graph reads, one per tensor argument in flattening order.
    inputs: list[Tensor]
    #: The buffers the graph writes, as the network returned them (a tensor or a tree of tensors).
    output: Any


class Capturer(Protocol):
    """How calls are captured and replayed: :class:`CudaCapturer`, or a stand-in that tests give."""

    #: The device type every tensor argument must be on.
    device_type: str

    def check_available(self) -> None: ...

    def capture(self, call: Callable[[], Any], device: torch.device, warmup: int) -> tuple[Callable[[], None], Any]:
        """Capture ``call`` (which reads the static inputs): the replay, which rewrites the output buffers
        from the inputs' current values, and those output buffers."""
        ...


class CudaCapturer:
    """``torch.cuda.CUDAGraph`` capture after ``warmup`` eager calls on a side stream."""

    device_type = "cuda"

    def check_available(self) -> None:
        if not torch.cuda.is_available():
            raise UserError("inference.cuda_graphs / --cuda-graphs: CUDA graphs need a CUDA device, and none is here")

    def capture(self, call: Callable[[], Any], device: torch.device, warmup: int) -> tuple[Callable[[], None], Any]:
        with _on_side_stream(device), _autocast_without_cache():
            for _ in range(warmup):  # one-time work (caches, Triton compilation) may synchronise here
                call()
            _refuse_host_syncs(call)
        graph = torch.cuda.CUDAGraph()
        try:  # past the checked call, what fails is an operation a capture forbids without a sync: rare
            with _autocast_without_cache(), torch.cuda.graph(graph):
                output = call()
        except RuntimeError as exc:
            raise UserError(
                f"inference.cuda_graphs / --cuda-graphs: the network's call cannot be captured as a CUDA graph "
                f"({exc}); sample without it, in a new process: torch leaves a failed capture's random-number "
                f"and allocator state behind"
            ) from None
        return graph.replay, output


def _refuse_host_syncs(call: Callable[[], Any]) -> None:
    """One more eager call, with every host synchronisation an error.

    A capture that meets a synchronisation (``.item()``, ``float(tensor)``, a blocking copy) fails in a way
    torch does not recover from: the CUDA generators stay registered with the dead capture and the allocator
    keeps allocating into its pool, so every later random draw in the process fails. Found here, eagerly,
    the refusal leaves the process as it was.
    """
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError as exc:
        raise UserError(
            f"inference.cuda_graphs / --cuda-graphs: the network's call synchronises with the host ({exc}), "
            f"which a CUDA graph cannot replay; sample without it"
        ) from None
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _autocast_without_cache() -> contextlib.AbstractContextManager[Any]:
    """The caller's CUDA autocast with its weight-cast cache off: a capture that read a cast cached before it
    would keep pointing at memory the cache frees when the caller's autocast region ends."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class GraphedNetwork(nn.Module):
    """``net`` with every call replayed from a CUDA graph captured on the first call of its signature.

    For sampling only: calls run under ``torch.no_grad()`` with every tensor argument on ``net``'s CUDA
    device. Attribute lookups the wrapper does not answer go to ``net``.
    """

    def __init__(self, net: nn.Module, *, warmup: int = 1, capturer: Capturer | None = None) -> None:
        super().__init__()
        self._capturer = capturer or CudaCapturer()
        self._capturer.check_available()
        self.net = net
        self.warmup = warmup
        self._captures: dict[tuple[Any, ...], _Capture] = {}

    @property
    def captures(self) -> int:
        """How many call signatures have been captured."""
        return len(self._captures)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        key = self._signature(leaves, spec)
        capture = self._captures.get(key)
        if capture is None:
            capture = self._capture(key, leaves, spec)
        for buffer, tensor in zip(capture.inputs, tensors, strict=True):
            buffer.copy_(tensor)
        capture.replay()
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, capture.output)

    def _signature(self, leaves: list[Any], spec: Any) -> tuple[Any, ...]:
        if torch.is_grad_enabled():
            raise UserError(
                "inference.cuda_graphs / --cuda-graphs: the network was called with autograd on; CUDA graphs "
                "replay sampling calls only (call it under torch.no_grad())"
            )
        parts: list[Any] = [spec, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")]
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor):
                if leaf.device.type != self._capturer.device_type:
                    raise UserError(
                        f"inference.cuda_graphs / --cuda-graphs: argument {i} of the network's call is on "
                        f"{leaf.device}, and a CUDA graph reads only device memory"
                    )
                parts.append(("tensor", tuple(leaf.shape), leaf.dtype, leaf.device))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    raise UserError(
                        f"inference.cuda_graphs / --cuda-graphs: argument {i} of the network's call "
                        f"({type(leaf).__name__}) is neither a tensor nor hashable, so its calls cannot be told apart"
                    ) from None
                parts.append(("value", type(leaf), leaf))
        return tuple(parts)

    def _capture(self, key: tuple[Any, ...], leaves: list[Any], spec: Any) -> _Capture:
        if len(self._captures) >= MAX_CAPTURES:
            raise UserError(
                f"inference.cuda_graphs / --cuda-graphs: the network was called with more than {MAX_CAPTURES} "
                "different argument shapes or values; replay helps fixed-shape calls only: sample without it"
            )
        static = [leaf.clone() if isinstance(leaf, Tensor) else leaf for leaf in leaves]

        def call() -> Any:
            args, kwargs = pytree.tree_unflatten(static, spec)
            return self.net(*args, **kwargs)

        tensors = [leaf for leaf in static if isinstance(leaf, Tensor)]
        if not tensors:
            raise UserError("inference.cuda_graphs / --cuda-graphs: the network was called without a tensor argument")
        replay, output = self._capturer.capture(call, tensors[0].device, self.warmup)
        out_leaves = pytree.tree_leaves(output)
        if not out_leaves or not all(isinstance(leaf, Tensor) for leaf in out_leaves):
            raise UserError(
                f"inference.cuda_graphs / --cuda-graphs: the network must return tensors, got {type(output).__name__}"
            )
        capture = _Capture(replay=replay, inputs=tensors, output=output)
        self._captures[key] = capture
        return capture

    def __repr__(self) -> str:
        return f"GraphedNetwork({self.net!r}, captures={self.captures})"


@contextlib.contextmanager
def _on_side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh stream that waits for, and is waited for by, the current one (the warm-up
    before a capture, as torch.cuda.graph's documentation asks, keeps its allocations off the capture's)."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)
