"""Build the live objects of a recipe: networks by role, phases with their optimisers and EMAs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from rcm_registry.engine.checkpoint import Checkpoint, full_tensors, latest_checkpoint
from rcm_registry.errors import CheckpointError, UserError
from rcm_registry.protocols import EmaAverager
from rcm_registry.recipe.schema import NetworkRole, Recipe, WeightsRef


@attrs.define
class PhaseRuntime:
    name: str
    trains: str
    every: int
    start: int
    losses: list[tuple[str, Any, int]]  # (name, loss object, first iteration)
    optimizer: torch.optim.Optimizer
    ema: EmaAverager | None
    grad_clip: float | None
    lr_warmup: int = 0
    lr_decay: str = "constant"
    min_lr_ratio: float = 0.0
    base_lrs: list[float] = attrs.field(factory=list)
    steps: int = 0  # optimiser steps taken by this phase


@attrs.define
class Graph:
    recipe: Recipe
    device: torch.device
    nets: dict[str, nn.Module]
    dataset: Any
    phases: dict[str, PhaseRuntime]
    schedule: Any = None
    teacher: Any = None
    time: dict[str, Any] = attrs.field(factory=dict)
    rollout: Any = None
    #: The ``parallel`` strategy the networks were wrapped by (None: one process, nothing wrapped).
    parallel: Any = None

    def module(self, role: str) -> nn.Module:
        """Network ``role`` unwrapped: its state_dict has the network's own names."""
        net = self.nets[role]
        return self.parallel.unwrap(net) if self.parallel is not None else net

    def select_phase(self, iteration: int) -> PhaseRuntime:
        """The phase that runs at ``iteration`` (see :class:`~rcm_registry.recipe.schema.PhaseConfig`)."""
        active = [p for p in self.phases.values() if p.start <= iteration]
        if not active:
            first = min(self.phases.values(), key=lambda p: p.start)
            return first
        if len(active) == 1:
            return active[0]
        since = iteration - max(p.start for p in active)
        for phase in active:
            if since % phase.every == 0:
                return phase
        return active[-1]


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
    """A state dict from a safetensors file or from a run directory's latest checkpoint."""
    path = Path(ref.path)
    if path.is_dir():
        ckpt_path = latest_checkpoint(path)
        if ckpt_path is None:
            raise CheckpointError(f"{path}: no complete checkpoint in this run directory")
        ckpt = Checkpoint(ckpt_path)
        role = ref.role
        if role is None:
            from rcm_registry.plugin_loading import registry
            from rcm_registry.recipe.validate import validate_recipe

            role = validate_recipe(ckpt.recipe(), registry(), str(ckpt_path / "recipe.yaml")).output_role
        states = ckpt.emas() if ref.ema else {}
        if role not in states:
            states = ckpt.models()
        if role not in states:
            raise CheckpointError(f"{ckpt_path}: holds no weights for network {role!r} (has: {sorted(states)})")
        return states[role]
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors weights ({exc})") from None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; every missing, unexpected or mis-shaped key in one error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{source}: weights do not fit the network"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {k}" for k in shapes]
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))


def build_network(role: NetworkRole) -> nn.Module:
    net = role.spec.build()
    if not isinstance(net, nn.Module):
        raise TypeError(f"network {role.spec.name!r} factory returned {type(net).__name__}, not an nn.Module")
    return net


def build_graph(recipe: Recipe, device: torch.device, parallel: Any = None) -> Graph:
    """All objects of ``recipe`` on ``device``, networks initialised (weights or ``init_from``).

    With a ``parallel`` strategy (already set up) every network is wrapped by it before optimisers and
    EMAs are made, so those see the wrapped (e.g. sharded) parameters.
    """
    nets: dict[str, nn.Module] = {}
    trained = recipe.trained_roles()

    def unwrapped(role: str) -> nn.Module:
        return parallel.unwrap(nets[role]) if parallel is not None else nets[role]

    for role in _role_order(recipe):
        entry = recipe.networks[role]
        net = None
        if entry.init_from and parallel is not None and parallel.shards_parameters:
            # Filled from the parent's shards by the strategy: never allocated whole.
            net = _build_on_meta(entry)
        if net is None:
            net = build_network(entry)
            if entry.init_from:
                parent = unwrapped(entry.init_from).state_dict()
                if parallel is not None and parallel.shards_parameters:  # gather the parent's shards whole
                    parent = full_tensors(parent, keep=True)
                load_strict(net, parent, f"networks.{role}.init_from={entry.init_from}")
            elif entry.weights is not None:
                load_strict(net, read_weights(entry.weights), f"networks.{role}.weights ({entry.weights.path})")
            net.to(device)
            copy_from = None
        else:
            copy_from = nets[entry.init_from]
        net.requires_grad_(role in trained)
        net.train(role in trained)
        if parallel is not None:
            net = parallel.wrap(role, net, trained=role in trained, copy_from=copy_from)
        nets[role] = net
    body = recipe.body
    phases: dict[str, PhaseRuntime] = {}
    for name, cfg in body.phases.items():
        target = cfg.trains or name
        losses = [(spec.name, spec.build(), start) for spec, start in zip(cfg.losses, cfg.loss_starts, strict=True)]
        params = [p for p in nets[target].parameters() if p.requires_grad]
        optimizer = cfg.optimizer.build()(params)
        ema = cfg.ema.build()(unwrapped(target)) if cfg.ema is not None else None
        phases[name] = PhaseRuntime(
            name=name,
            trains=target,
            every=cfg.every,
            start=cfg.start,
            losses=losses,
            optimizer=optimizer,
            ema=ema,
            grad_clip=cfg.grad_clip,
            lr_warmup=cfg.lr_warmup,
            lr_decay=cfg.lr_decay,
            min_lr_ratio=cfg.min_lr_ratio,
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
