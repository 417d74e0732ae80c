"""The top-level shape of a recipe. Component sections are validated against their own configs."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from rcm_registry import schema as s
from rcm_registry.schema import ComponentSpec


@attrs.define
class RunConfig:
    """``run:`` how long, how big, how precise, where results go."""

    iterations: int = attrs.field(validator=s.positive)
    batch_size: int = attrs.field(
        default=256, validator=[s.positive, s.at_most(2**31 - 1, "torch indexes a batch with 32-bit ints in places")]
    )
    #: Write a checkpoint every N iterations (0: only at the end). The last iteration always writes one.
    checkpoint_every: int = attrs.field(default=0, validator=s.non_negative)
    keep_checkpoints: int = attrs.field(default=2, validator=s.positive)
    log_every: int = attrs.field(default=10, validator=s.positive)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = attrs.field(default=0, validator=s.non_negative)
    #: ``auto`` picks CUDA when available, else CPU.
    device: str = "auto"
    #: Intra-op CPU threads for torch (none: torch's default). Small networks run fastest with 1:
    #: thread hand-offs cost more than their matrix products.
    cpu_threads: int | None = attrs.field(default=None, validator=[s.positive, s.at_most(4096)])
    #: Every N iterations (0: never) sample the output network (EMA weights when it has them) with the recipe's
    #: ``sample`` sampler: a picture in ``RUN/samples/`` and to the loggers that take pictures.
    sample_every: int = attrs.field(default=0, validator=s.non_negative)
    #: Samples in each of those pictures.
    sample_num: int = attrs.field(default=16, validator=s.positive)


def _iteration(_: Any, __: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"expected an int >= 0, got {value!r}")


@s.entry
@attrs.frozen
class LossEntry:
    """One entry of ``phases.NAME.losses``: the loss component, and the iteration it joins at.

    Written flat in YAML, ``{use: dmd, weight: 0.1, start: 400}``: ``start`` belongs to the engine, every
    other key to the loss's own config.
    """

    spec: s.LossSpec
    #: First iteration at which this loss is part of its phase's objective.
    start: int = attrs.field(default=0, validator=_iteration)

    @property
    def name(self) -> str:
        return self.spec.name


@attrs.define
class PhaseConfig:
    """``phases.NAME:`` one optimisation step kind: which network it trains, with which losses.

    Alternation: at iteration i, of the phases whose ``start`` <= i, a lone phase runs every
    iteration; with several, the first in recipe order whose ``every`` divides the iterations since
    the latest of their starts runs (so ``student: {every: 5}`` then ``critic: {}`` gives one student
    step, then four critic steps).
    """

    losses: list[LossEntry] = attrs.field(validator=attrs.validators.min_len(1))
    optimizer: s.OptimizerSpec
    #: The network role this phase optimises (default: the role named like the phase).
    trains: str | None = None
    every: int = attrs.field(default=1, validator=s.positive)
    start: int = attrs.field(default=0, validator=s.non_negative)
    ema: s.EmaSpec | None = None
    #: Clip the global gradient norm to this value (none: no clipping).
    grad_clip: float | None = attrs.field(default=None, validator=s.positive)
    #: Learning rate: linear warmup over this many iterations, then ``lr_decay`` until ``run.iterations``
    #: down to ``min_lr_ratio`` times the optimiser's lr.
    lr_warmup: int = attrs.field(default=0, validator=s.non_negative)
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = attrs.field(default=0.0, validator=s.in_range(0.0, 1.0))


#: ``weights.format`` values the engine reads itself, for every network.
ENGINE_WEIGHTS_FORMATS = ("auto", "run", "safetensors")


@attrs.define
class WeightsRef:
    """``networks.ROLE.weights``: the checkpoint the role's parameters start from, for every network.

    ``path`` is one of:

    * an rcm run directory or one of its checkpoint folders (``format: run``): network ``role`` of it
      (default: the run's output network), its EMA weights when ``ema`` and the run kept an EMA;
    * a safetensors file in the network's own key names (``format: safetensors``);
    * a checkpoint in a layout a network family reads (e.g. Wan's and Cosmos' ``native`` and ``diffusers``
      folders, and for Wan the rCM release's ``.pt`` files and DCP directories, ``rcm-release``): the
      family's config reads it, and the architecture with it; ``role`` and ``ema`` then go to the family,
      which uses them to pick one of a release checkpoint's networks and refuses them elsewhere.

    ``format: auto`` tells them apart: a run, else the family's own detection for a network that reads
    checkpoints, else safetensors. Relative paths are read from the working directory.
    """

    path: str
    format: str = "auto"
    ema: bool = True
    #: Which role's weights to take from a run directory (default: the run's output network), or which
    #: network of an rCM release checkpoint (``student``, ``teacher``, ``fake_score``; default the student).
    role: str | None = None


@attrs.define
class NetworkRole:
    """A validated ``networks.ROLE`` entry."""

    spec: ComponentSpec
    init_from: str | None = None
    #: Weights the engine loads after building (a run, or own-key safetensors); None when there are none or
    #: when the network's family reads them itself (they are then in ``spec.config.weights``).
    weights: WeightsRef | None = None


@attrs.define
class InferenceConfig:
    """``inference:`` how the output network runs when a command samples it (``rcm sample``, ``rcm generate``).

    Training never reads this section (the trained networks keep their own settings), and neither do the
    pictures a run draws while it trains; ``rcm sample`` / ``rcm generate`` flags override it.
    """

    #: An attention backend for the sampled network instead of its own, e.g. ``{use: int8_sage}``.
    attention: s.AttentionSpec | None = None
    #: Run the linear layers of the network's transformer blocks in FP8 (e4m3, per-channel weight scales).
    fp8_linear: bool = False
    #: Replay the network's calls from CUDA graphs, one captured per call signature
    #: (:mod:`rcm_registry.engine.cuda_graphs`); CUDA only, exact: the replay runs the captured kernels.
    cuda_graphs: bool = False


@attrs.define
class RecipeBody:
    """Every top-level key except ``networks`` (validated separately, for ``init_from``)."""

    phases: dict[str, PhaseConfig] = attrs.field(validator=attrs.validators.min_len(1))
    data: s.DatasetSpec
    run: RunConfig
    description: str = ""
    schedule: s.ScheduleSpec | None = None
    teacher_wrapper: s.TeacherSpec | None = None
    time: dict[str, s.TimeSamplerSpec] = attrs.field(factory=dict)
    rollout: s.RolloutSpec | None = None
    #: How the run spreads over processes; one process unless the recipe says otherwise.
    parallel: ComponentSpec = s.component("parallel", default={"use": "single"})  # noqa: RUF009 (an attrs.field)
    sample: s.SamplerSpec | None = None
    metrics: list[s.MetricSpec] = attrs.field(factory=list)
    #: The network role that ``rcm sample`` and ``rcm export`` use (default: the first phase's).
    output_network: str | None = None
    #: Encoders/decoders by role, for ``rcm synth`` and ``rcm generate``: ``text`` (prompts → the network's
    #: text condition) and ``vae`` (latents ↔ pixels), e.g. ``{text: {use: umt5, ...}, vae: {use: wan_vae, ...}}``.
    codecs: dict[str, s.CodecSpec] = attrs.field(factory=dict)
    inference: InferenceConfig = attrs.field(factory=InferenceConfig)
    #: Experiment trackers the run's metrics go to, e.g. ``[{use: jsonl}, {use: tensorboard}]``; none given:
    #: ``jsonl`` alone (``RUN/metrics.jsonl``).
    loggers: list[s.LoggerSpec] | None = None


@attrs.define
class Recipe:
    """A fully validated recipe; ``data`` keeps the resolved YAML (saved with every checkpoint)."""

    networks: dict[str, NetworkRole]
    body: RecipeBody
    data: dict[str, Any]
    source: str = ""

    @property
    def output_role(self) -> str:
        if self.body.output_network:
            return self.body.output_network
        first = next(iter(self.body.phases.values()))
        return first.trains or next(iter(self.body.phases))

    def trained_roles(self) -> set[str]:
        return {self.trains(name) for name in self.body.phases}

    def trains(self, phase: str) -> str:
        """The network role phase ``phase`` optimises."""
        return self.body.phases[phase].trains or phase

    def phase_at(self, iteration: int) -> str:
        """The phase that runs at ``iteration`` (the alternation rule of :class:`PhaseConfig`).

        Of the phases whose ``start`` <= ``iteration``, a lone one runs; of several, the first in recipe
        order whose ``every`` divides the iterations since the latest of their starts, else the last of
        them. Validation makes sure some phase starts at 0, so there is always one.
        """
        phases = self.body.phases
        active = [name for name, p in phases.items() if p.start <= iteration]
        if not active:
            raise ValueError(f"no phase has started at iteration {iteration}")
        if len(active) == 1:
            return active[0]
        since = iteration - max(phases[name].start for name in active)
        return next((name for name in active if since % phases[name].every == 0), active[-1])
