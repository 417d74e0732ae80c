"""Experiment tracking during ``rcm run``: the recipe's loggers, what the trainer logs besides the losses, and the
sample pictures of ``run.sample_every``.

The loggers themselves are components (kind ``logger``, in plugins); this module only fans records out to them.
Rank 0 alone tracks; the sample pictures are drawn on every rank (a sharded network needs all of them to run)
and written by rank 0.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcm_registry.engine.graph import Graph
from rcm_registry.protocols import image_logger, network_inputs
from rcm_registry.recipe.sections import Recipe
from rcm_registry.schema import ComponentSpec

#: The logger of a recipe without a ``loggers`` section: ``RUN/metrics.jsonl``.
DEFAULT_LOGGER = "jsonl"
#: Where the sample pictures go, one PNG per ``run.sample_every`` iterations.
SAMPLES_DIR = "samples"


def logger_specs(recipe: Recipe) -> list[ComponentSpec]:
    """The recipe's ``loggers``, or the default one when it has none."""
    if recipe.body.loggers is not None:
        return list(recipe.body.loggers)
    from rcm_registry.plugin_loading import registry

    reg = registry()
    return [ComponentSpec(component=reg.get("logger", DEFAULT_LOGGER), config=reg.config("logger", DEFAULT_LOGGER))]


class Tracker:
    """The run's loggers, opened; every record and picture goes to each of them."""

    def __init__(self, run_dir: Path, loggers: list[Any]) -> None:
        self.run_dir = run_dir
        self.loggers = loggers

    @classmethod
    def open(cls, recipe: Recipe, run_dir: Path, start: int) -> Tracker:
        """Build and open every logger of ``recipe``; when one fails, those already open are closed again."""
        opened: list[Any] = []
        try:
            for spec in logger_specs(recipe):
                logger = spec.build()
                logger.open(run_dir, recipe.data, start)
                opened.append(logger)
        except BaseException:
            cls(run_dir, opened).close()
            raise
        return cls(run_dir, opened)

    def log(self, iteration: int, record: Mapping[str, float | str]) -> None:
        for logger in self.loggers:
            logger.log(iteration, record)

    def log_image(self, iteration: int, tag: str, picture: Any) -> Path:
        """``picture`` (a PIL image) as ``RUN/samples/TAG_NNNNNNNN.png`` and to every logger that takes pictures."""
        from rcm_registry.engine.pictures import save_png_atomic

        folder = self.run_dir / SAMPLES_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{tag}_{iteration:08d}.png"
        save_png_atomic(picture, path)
        rgb = np.asarray(picture.convert("RGB"))
        for logger in self.loggers:
            write = image_logger(logger)
            if write is not None:
                write(iteration, tag, rgb)
        return path

    def close(self) -> None:
        """Close every logger, even when one of them fails (the first failure is raised afterwards)."""
        failure: BaseException | None = None
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class Throughput:
    """Samples (and tokens) trained per second since the previous record."""

    def __init__(self, recipe: Recipe, dataset: Any, iteration: int) -> None:
        self.batch_size = recipe.body.run.batch_size
        role = recipe.output_role
        self.tokens = tokens_per_sample(recipe.networks[role].spec.config, tuple(dataset.sample_shape))
        self.iteration, self.time = iteration, time.perf_counter()

    def rates(self, iteration: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self.time, 1e-9)
        samples = (iteration - self.iteration) * self.batch_size / seconds
        self.iteration, self.time = iteration, now
        rates = {"samples_per_s": samples}
        if self.tokens is not None:
            rates["tokens_per_s"] = samples * self.tokens
        return rates


def tokens_per_sample(config: object, sample_shape: tuple[int, ...]) -> int | None:
    """The tokens an attention network makes of one (C, ...) sample: its axes after the channels divided by the
    patch the network declares (``multiple_of`` of its ``x`` input); None for a network without attention heads
    or patches (the quickstart MLP)."""
    inputs = network_inputs(config)
    if inputs is None or inputs.heads is None or inputs.x.multiple_of is None:
        return None
    patch = inputs.x.multiple_of
    if len(patch) != len(sample_shape):
        return None
    return math.prod(size // step for size, step in zip(sample_shape[1:], patch[1:], strict=True))


def learning_rates(graph: Graph) -> dict[str, float]:
    """``lr/PHASE``: each phase's current learning rate (its first parameter group's, warmup and decay applied)."""
    return {f"lr/{name}": float(p.optimizer.param_groups[0]["lr"]) for name, p in graph.phases.items()}


def gpu_memory(device: torch.device) -> dict[str, float]:
    """GiB of CUDA memory held by tensors now and at most since the start (nothing on other devices)."""
    if device.type != "cuda":
        return {}
    gib = 2.0**30
    return {
        "gpu/memory_gib": torch.cuda.memory_allocated(device) / gib,
        "gpu/max_memory_gib": torch.cuda.max_memory_allocated(device) / gib,
    }


@contextlib.contextmanager
def ema_weights(graph: Graph, role: str) -> Iterator[bool]:
    """Inside the block network ``role`` holds its EMA weights (when a phase keeps an EMA of it) and is in eval
    mode; afterwards its trained weights and mode are back, bit for bit. Yields whether the EMA is in."""
    module = graph.module(role)
    ema = next((p.ema for p in graph.phases.values() if p.trains == role and p.ema is not None), None)
    training = module.training
    saved = None
    if ema is not None:
        saved = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
        ema.copy_to(module)
    module.eval()
    try:
        yield ema is not None
    finally:
        if saved is not None:
            with torch.no_grad():
                for key, value in module.state_dict(keep_vars=True).items():
                    value.copy_(saved[key])
        module.train(training)


def sample_picture(recipe: Recipe, graph: Graph, iteration: int) -> Any:
    """The picture of ``run.sample_num`` samples of the output network at ``iteration``: the recipe's ``sample``
    sampler, EMA weights when the network has them, seeded with ``run.seed`` (the same noise every time), and
    the training generators untouched."""
    from rcm_registry.engine.pictures import samples_picture
    from rcm_registry.engine.sampling import sample_network

    run = recipe.body.run
    assert recipe.body.sample is not None, "validation requires a `sample` section with run.sample_every"
    role = recipe.output_role
    with ema_weights(graph, role) as used_ema:
        samples, condition, _ = sample_network(
            recipe.body.sample.build(),
            graph.nets[role],
            graph.dataset,
            run.sample_num,
            seed=run.seed,
            schedule=graph.schedule,
            teacher=graph.teacher,
            device=graph.device,
        )
    title = f"{role} ({'EMA' if used_ema else 'raw'}), iteration {iteration}"
    return samples_picture(samples, condition, graph.dataset, title)
