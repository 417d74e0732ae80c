"""Build the live objects of a recipe: networks by role, phases with their optimisers and EMAs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from rcm_registry.engine.checkpoint import checkpoint_recipe, full_tensors, resolve_checkpoint, trained_weights
from rcm_registry.engine.run_layout import names_a_run
from rcm_registry.errors import CheckpointError, UserError
from rcm_registry.protocols import EmaAverager, Loss, Parallel
from rcm_registry.recipe.sections import LossEntry, NetworkRole, PhaseConfig, Recipe, WeightsRef
from rcm_registry.state_dicts import load_strict


@attrs.define
class LossRuntime:
    """A built loss of a phase, with the recipe entry it came from."""

    entry: LossEntry
    loss: Loss

    @property
    def name(self) -> str:
        return self.entry.name

    def active(self, iteration: int) -> bool:
        return iteration >= self.entry.start


@attrs.define
class PhaseRuntime:
    """A phase's live objects beside its recipe config."""

    name: str
    config: PhaseConfig
    #: The network role the phase optimises (``config.trains`` or the phase's name).
    trains: str
    losses: list[LossRuntime]
    optimizer: torch.optim.Optimizer
    ema: EmaAverager | None
    base_lrs: list[float] = attrs.field(factory=list)
    steps: int = 0  # optimiser steps taken by this phase


@attrs.define
class Graph:
    recipe: Recipe
    device: torch.device
    nets: dict[str, nn.Module]
    dataset: Any
    phases: dict[str, PhaseRuntime]
    #: The ``parallel`` strategy the networks were wrapped by.
    parallel: Parallel
    schedule: Any = None
    teacher: Any = None
    time: dict[str, Any] = attrs.field(factory=dict)
    rollout: Any = None

    def module(self, role: str) -> nn.Module:
        """Network ``role`` unwrapped: its state_dict has the network's own names."""
        return self.parallel.unwrap(self.nets[role])

    def select_phase(self, iteration: int) -> PhaseRuntime:
        """The phase that runs at ``iteration`` (see :meth:`~rcm_registry.recipe.sections.Recipe.phase_at`)."""
        return self.phases[self.recipe.phase_at(iteration)]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"run.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device: {name!r} asked for, but CUDA is not available here (use auto or cpu)")
    return device


def _role_order(recipe: Recipe) -> list[str]:
    order: list[str] = []

    def visit(role: str) -> None:
        if role in order:
            return
        parent = recipe.networks[role].init_from
        if parent:
            visit(parent)
        order.append(role)

    for role in recipe.networks:
        visit(role)
    return order


def read_weights(ref: WeightsRef) -> dict[str, torch.Tensor]:
    """The state dict ``ref`` names (see :class:`~rcm_registry.recipe.sections.WeightsRef`): network
    ``ref.role`` of a run (default: its output network), its EMA when ``ref.ema`` and the run kept one; or a
    safetensors file in the network's own key names."""
    path = Path(ref.path)
    if names_a_run(path):
        ckpt = resolve_checkpoint(path)
        role = ref.role or checkpoint_recipe(ckpt).output_role
        return trained_weights(ckpt, role, ema=ref.ema)[0]
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors weights ({exc})") from None


def build_network(role: NetworkRole) -> nn.Module:
    net = role.spec.build()
    if not isinstance(net, nn.Module):
        raise TypeError(f"network {role.spec.name!r} factory returned {type(net).__name__}, not an nn.Module")
    return net


def build_with_weights(entry: NetworkRole, role: str) -> nn.Module:
    """Network ``role`` built with the weights its recipe entry names (the family's, or the engine's
    :func:`read_weights`), random where it names none."""
    net = build_network(entry)
    if entry.weights is not None:
        load_strict(net, read_weights(entry.weights), source=f"networks.{role}.weights ({entry.weights.path})")
    return net


def build_graph(recipe: Recipe, device: torch.device, parallel: Parallel) -> Graph:
    """All objects of ``recipe`` on ``device``, networks initialised (weights or ``init_from``).

    Every network is wrapped by the ``parallel`` strategy (already set up) before optimisers and EMAs
    are made, so those see the wrapped (e.g. sharded) parameters.
    """
    nets: dict[str, nn.Module] = {}
    trained = recipe.trained_roles()

    def unwrapped(role: str) -> nn.Module:
        return parallel.unwrap(nets[role])

    for role in _role_order(recipe):
        entry = recipe.networks[role]
        net = None
        if entry.init_from and parallel.shards_parameters:
            # Filled from the parent's shards by the strategy: never allocated whole.
            net = _build_on_meta(entry)
        if net is None:
            if entry.init_from:
                net = build_network(entry)
                parent = unwrapped(entry.init_from).state_dict()
                if parallel.shards_parameters:  # gather the parent's shards whole
                    parent = full_tensors(parent, keep=True)
                load_strict(net, parent, source=f"networks.{role}.init_from={entry.init_from}")
            else:
                net = build_with_weights(entry, role)
            net.to(device)
            copy_from = None
        else:
            copy_from = nets[entry.init_from]
        net.requires_grad_(role in trained)
        net.train(role in trained)
        nets[role] = parallel.wrap(role, net, trained=role in trained, copy_from=copy_from)
    body = recipe.body
    phases: dict[str, PhaseRuntime] = {}
    for name, cfg in body.phases.items():
        target = recipe.trains(name)
        params = [p for p in nets[target].parameters() if p.requires_grad]
        optimizer = cfg.optimizer.build()(params)
        phases[name] = PhaseRuntime(
            name=name,
            config=cfg,
            trains=target,
            losses=[LossRuntime(entry=e, loss=e.spec.build()) for e in cfg.losses],
            optimizer=optimizer,
            ema=cfg.ema.build()(unwrapped(target)) if cfg.ema is not None else None,
            base_lrs=[float(group["lr"]) for group in optimizer.param_groups],
        )
    return Graph(
        recipe=recipe,
        device=device,
        nets=nets,
        dataset=body.data.build(),
        phases=phases,
        schedule=body.schedule.build() if body.schedule else None,
        teacher=body.teacher_wrapper.build() if body.teacher_wrapper else None,
        time={k: v.build() for k, v in body.time.items()},
        rollout=body.rollout.build() if body.rollout else None,
        parallel=parallel,
    )


def _build_on_meta(entry: NetworkRole) -> nn.Module | None:
    """``entry``'s network on the meta device, or None when it has state that would not survive that.

    Non-persistent buffers are not in the state dict, so copying the parent's state could not fill them.
    """
    with torch.device("meta"):
        net = build_network(entry)
    persistent = set(net.state_dict())
    if any(name not in persistent for name, _ in net.named_buffers()):
        return None
    return net


def iter_params(graph: Graph) -> Iterator[tuple[str, nn.Parameter]]:
    for role, net in graph.nets.items():
        for name, p in net.named_parameters():
            yield f"{role}.{name}", p
