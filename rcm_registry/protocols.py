"""What the object built by each kind of component must do.

A component's factory is called with its validated config and returns an object satisfying the
protocol of its kind below. The engine only talks to components through these methods, so a plugin
can replace any one of them.

Conventions used throughout:

* TrigFlow time ``t`` in [0, π/2] (float64 tensors of shape (B,)), ``x_t = cos t·x0 + sin t·ε``.
* A *condition* is a dict of keyword arguments for the network (``{"text": emb}`` for Wan,
  ``{"label": y}`` for the quickstart MLP); the empty dict means unconditional.
* Networks take time in their own units (``timestep``, e.g. 0–1000); schedules and teacher wrappers
  do the conversion. Timesteps are float32 (float64 for a float64 network), never bf16: networks keep
  their time embeddings in float32.

Besides the required protocol of its kind, a component (or its config) may have optional parts, each a
small protocol at the end of this module (:class:`ChecksRecipe`, :class:`HasReduction`,
:class:`ReportsLayout`, :class:`Exportable`, ...). Whoever calls one reads it through the accessor
function next to it (e.g. :func:`loss_reduction`), never by probing attribute names itself, so that this
module is the complete list of what the engine may ask of a plugin.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor, nn

from rcm_registry.errors import UserError

Condition = dict[str, Tensor]
#: How a loss reduces over the batch (see :class:`HasReduction`).
Reduction = Literal["mean", "sum"]


@attrs.define
class Batch:
    """One training batch: clean data and the network condition that goes with it."""

    x0: Tensor
    condition: Condition = attrs.field(factory=dict)
    #: The condition for the unconditional / negative branch of classifier-free guidance.
    null_condition: Condition | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        def move(c: Condition | None) -> Condition | None:
            if c is None:
                return None
            return {k: v.to(device) for k, v in c.items()}

        x0 = self.x0.to(device, dtype) if dtype is not None else self.x0.to(device)
        return Batch(x0=x0, condition=move(self.condition) or {}, null_condition=move(self.null_condition))


@attrs.frozen
class LossOutput:
    """A scalar loss to minimise and float metrics to log (e.g. ``{"nan_masked": 0.0}``)."""

    loss: Tensor
    metrics: Mapping[str, float] = attrs.field(factory=dict)


@runtime_checkable
class Network(Protocol):
    """kind ``network``: an ``nn.Module`` mapping noisy data to its prediction.

    ``forward(x, timestep, **condition) -> Tensor`` shaped like ``x``. ``timestep`` has shape (B,)
    in the network's own units. A network whose component ``provides={"jvp"}`` promises that its
    forward works under ``torch.autograd.forward_ad`` dual tensors.
    """

    def __call__(self, x: Tensor, timestep: Tensor, **condition: Tensor) -> Tensor: ...


class Schedule(Protocol):
    """kind ``schedule``: a forward process ``x_u = alpha(u)·x0 + sigma(u)·ε`` in its own time u.

    All arithmetic in float64. ``network_time(u)`` is what the network receives as ``timestep``.
    """

    def alpha_sigma(self, u: Tensor) -> tuple[Tensor, Tensor]: ...
    def velocity_coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/du, dσ/du): the flow-matching target is dα·x0 + dσ·ε."""
        ...

    def from_trigflow(self, t: Tensor) -> Tensor: ...
    def to_trigflow(self, u: Tensor) -> Tensor: ...
    def network_time(self, u: Tensor) -> Tensor: ...
    def time_grid(self, steps: int) -> Tensor:
        """``steps + 1`` decreasing times from pure noise to data, for ODE samplers."""
        ...


class TimeSampler(Protocol):
    """kind ``time_sampler``: draws TrigFlow times, float64 of shape (n,), inside (0, π/2)."""

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...


class Teacher(Protocol):
    """kind ``teacher``: maps a network's parameterisation into TrigFlow, with CFG folded in.

    ``denoise`` returns ``(x0, F)`` at TrigFlow time ``t``: ``x0 = cos t·x_t − sin t·F``. When
    ``guidance`` is given (not None) and ``null_condition`` is not None, ``F = F_u + w·(F_c − F_u)``.
    """

    def denoise(
        self,
        net: nn.Module,
        x_t: Tensor,
        t: Tensor,
        condition: Condition,
        *,
        guidance: float | None = None,
        null_condition: Condition | None = None,
    ) -> tuple[Tensor, Tensor]: ...


class Loss(Protocol):
    """kind ``loss``: one term of a phase's objective."""

    def __call__(self, ctx: Any) -> LossOutput:
        """``ctx`` is the engine's :class:`rcm_registry.engine.context.StepContext`."""
        ...


class Rollout(Protocol):
    """kind ``rollout``: generates ``x̂0`` with the student from noise (gradient through the last call)."""

    def __call__(self, ctx: Any, *, grad: bool) -> Tensor: ...


class Optimizer(Protocol):
    """kind ``optimizer``: makes a ``torch.optim.Optimizer`` for the given parameters."""

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer: ...


class EmaAverager(Protocol):
    """The state an ``ema`` component creates for one module (a shadow copy of its parameters)."""

    def update(self, module: nn.Module, step: int) -> None:
        """Blend ``module``'s parameters in; ``step`` counts updates from 0."""
        ...

    def copy_to(self, module: nn.Module) -> None: ...
    def state_dict(self) -> dict[str, Tensor]: ...
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None: ...


class Ema(Protocol):
    """kind ``ema``: creates an averager for a module."""

    def __call__(self, module: nn.Module) -> EmaAverager: ...


class Dataset(Protocol):
    """kind ``dataset``: batches of clean data (latents) with their conditions.

    ``state_dict`` / ``load_state_dict`` carry the read position so that a resumed run continues
    with exactly the batches an uninterrupted one would have seen.
    """

    #: Shape of one sample, e.g. (2,) for 2-D points, (C, T, H, W) for video latents.
    sample_shape: tuple[int, ...]

    def next_batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...
    def conditions(self, n: int, generator: torch.Generator) -> tuple[Condition, Condition | None]:
        """Conditions (and the null condition) for ``n`` samples to generate at evaluation."""
        ...

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class SynthPrompts(Protocol):
    """The prompts ``rcm synth`` samples the teacher for, as a :class:`SynthStore` reads them: captions to
    encode with the recipe's text codec, or precomputed text embeddings; and the network conditions
    besides the text (one row per prompt)."""

    #: The ``--prompts`` file.
    source: Path
    #: One caption per prompt, or None (embeddings without captions).
    captions: list[str] | None
    #: Precomputed (N, L, D) embeddings and their (N, L) bool masks, or None: encode the captions.
    text: Tensor | None
    text_mask: Tensor | None
    #: The negative prompt's (1, L, D) embedding and (1, L) mask that came with precomputed embeddings, or None.
    negative_text: Tensor | None
    negative_mask: Tensor | None
    #: Conditions besides the text by name (``image``, ...), each (N, ...).
    conditions: dict[str, Tensor]

    def __len__(self) -> int: ...
    def record(self) -> dict[str, Any]:
        """What identifies these prompts and conditions (digests, count, names): JSON values, recorded with
        the other settings and compared on restart."""
        ...


class SynthStore(Protocol):
    """Where ``rcm synth`` reads its prompts and writes the teacher's samples: shards of consecutive prompts.

    Shard ``k`` holds the ``count`` prompts from ``first`` on. A shard is written whole or not at all, so
    an interrupted run is continued by writing the shards that are missing; the store's index is kept up
    to date after every shard, so a partial dataset can already be trained on. The calls come in this
    order: :meth:`read_prompts`; :meth:`start`; :meth:`has_shard` for every shard; :meth:`write_negative`
    and :meth:`write_shard` (only for shards still to do); :meth:`finish`.
    """

    def read_prompts(self, path: Path, conditions: Path | None = None) -> SynthPrompts:
        """The ``--prompts`` file, with the ``cond.NAME`` rows of a ``--conditions`` file added; a
        :class:`rcm_registry.errors.UserError` naming the file (and key or line) for anything wrong."""
        ...

    def start(self, settings: Mapping[str, Any], info: Mapping[str, Any], *, captions: bool) -> None:
        """Create the directory and record ``settings`` (JSON values) in it, or, continuing, check they are
        those it was started with (a UserError listing every difference); drop writes a kill cut short.
        ``info`` is provenance for the index; ``captions``: the shards will store captions."""
        ...

    def has_shard(self, k: int, first: int, count: int) -> bool:
        """Whether shard ``k`` is complete; a UserError when it holds other prompts than ``first`` ..
        ``first + count − 1``."""
        ...

    def write_negative(self, text: Tensor, mask: Tensor, prompt: str) -> None:
        """The negative prompt ``prompt``'s embedding, (1, L, D) and (1, L); kept when already written."""
        ...

    def write_shard(
        self,
        k: int,
        first: int,
        *,
        latents: Tensor,
        text: Tensor,
        text_mask: Tensor,
        conditions: Mapping[str, Tensor],
        captions: Sequence[str] | None,
    ) -> None:
        """Shard ``k``: rows ``first`` .. of the samples (``latents`` (n, C, T, H, W)), their text embeddings
        and masks, conditions besides the text, and captions, in the dtypes given; then the index."""
        ...

    def finish(self) -> tuple[int, int]:
        """Write the index of every complete shard; returns (samples, shards) in it."""
        ...


class Sampler(Protocol):
    """kind ``sampler``: draws samples from a trained network (teacher ODE or few-step student)."""

    def __call__(self, ctx: Any) -> Tensor:
        """``ctx`` is :class:`rcm_registry.engine.context.SampleContext`; returns x0 samples."""
        ...


class Metric(Protocol):
    """kind ``metric``: scores samples (and their conditions) against the dataset's truth."""

    def __call__(self, samples: Tensor, condition: Condition, dataset: Dataset) -> dict[str, float]: ...


class Logger(Protocol):
    """kind ``logger``: where a run's metrics go (experiment tracking; recipe key ``loggers``, a list).

    Rank 0 alone builds and calls loggers. :meth:`open` once before training with the run directory, the
    resolved recipe and ``start``, the iteration the run starts or resumes at (a logger that keeps its own
    history drops what it holds past ``start``: those iterations are trained again). :meth:`log` every
    ``run.log_every`` iterations with one record: ``phase`` (a string) and floats (``loss``, ``loss/NAME``,
    ``lr/PHASE``, ``PHASE/grad_norm``, ``LOSS/nan_masked``, ``samples_per_s``, ...). :meth:`close` at the
    end, also after an error. A logger that takes pictures has :class:`LogsImages` too.
    """

    def open(self, run_dir: Path, recipe: Mapping[str, Any], start: int) -> None: ...
    def log(self, iteration: int, record: Mapping[str, float | str]) -> None: ...
    def close(self) -> None: ...


class TextEncoder(Protocol):
    """A ``codec`` in the role ``codecs.text``: prompts → the network's text condition (rcm synth, rcm generate)."""

    def to(self, device: torch.device | str) -> TextEncoder: ...

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(text (B, L, D) float32, mask (B, L) bool)`` on the codec's device, zero past each prompt."""
        ...


class VideoCodec(Protocol):
    """A ``codec`` in the role ``codecs.vae``: pixels ↔ the normalised latents the network is trained on."""

    latent_channels: int

    def to(self, device: torch.device | str) -> VideoCodec: ...
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) in [−1, 1] → (B, C, T', H', W')."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """(B, C, T', H', W') → (B, 3, T, H, W) in [−1, 1]."""
        ...


class Attention(Protocol):
    """kind ``attention``: ``attn(q, k, v, scale=None) -> o`` in the (B, H, S, D) layout of SDPA.

    Inputs may be strided views of (B, S, H, D) tensors. A backend that supports forward-mode AD
    (``provides={"jvp"}``) must accept dual tensors and return a dual output.
    """

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor: ...


class SequenceParallel(Protocol):
    """What a network calls to spread its token sequence over a context-parallel group.

    A network component that declares ``provides={"context_parallel"}`` has a ``sequence_parallel``
    attribute (None by default); the ``parallel`` strategy sets it to an object like this. The network
    splits its tokens after embedding them, runs self-attention through :meth:`attention` and gathers
    its output, so the caller sees whole tensors. Every method accepts forward-mode AD dual tensors.
    """

    #: Ranks in the context-parallel group.
    size: int

    def split(self, x: Tensor, dim: int) -> Tensor:
        """This rank's contiguous chunk of ``x`` along ``dim``; an error naming both sizes if it does not divide."""
        ...

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """Every rank's chunk concatenated along ``dim`` (differentiable)."""
        ...

    def attention(self, inner: Attention) -> Attention:
        """``inner`` as a self-attention over sequence-sharded q/k/v (B, H, S/size, D)."""
        ...


class Parallel(Protocol):
    """kind ``parallel``: how a run spreads over the processes torchrun starts.

    The engine calls :meth:`setup` once (it joins the process group from the torchrun environment and
    returns this process's device), :meth:`wrap` on every network in role order (frozen ones too), and
    builds optimisers and EMAs on the wrapped networks' parameters afterwards.

    Data: ``run.batch_size`` is the global batch of one optimiser step. Every rank draws the whole batch
    from the dataset (same generator on every rank) and keeps slice ``data_rank·accumulation + micro``
    of ``data_size·accumulation`` equal slices; draws the losses make through the step context for the
    local batch (``ctx.randn_like``, ``ctx.rand``, ``ctx.time``) are drawn for the global batch and
    sliced the same way, so every rank's generators stay in step and the result equals one process's.
    Ranks of one context-parallel group (``context_size``) share a slice.

    Gradients: each rank back-propagates ``data_size`` times its part of the global loss (a loss is a
    batch mean unless its config has ``reduction: sum``, then a batch sum), and the strategy averages
    gradients over all ranks, which gives the gradient of the global loss.
    """

    rank: int
    world_size: int
    #: Index of this rank's slice of the batch, and the number of slices (ranks that see different samples).
    data_rank: int
    data_size: int
    #: Ranks that share the same samples and split their token sequence.
    context_size: int
    #: Micro-batches per optimiser step.
    accumulation: int
    #: Networks initialised from another role are built on the meta device and filled by ``wrap``.
    shards_parameters: bool
    #: Every rank writes its shards through ``torch.distributed.checkpoint`` (else rank 0 writes all).
    sharded_checkpoints: bool

    def setup(self, device: torch.device, precision: str) -> torch.device: ...
    def check_batch(self, batch_size: int) -> None:
        """Raise a user error when the batch does not split into equal slices."""
        ...

    def wrap(self, role: str, net: nn.Module, *, trained: bool, copy_from: nn.Module | None = None) -> nn.Module:
        """The network to call (possibly wrapped or sharded). With ``copy_from`` (``shards_parameters``),
        ``net`` is on the meta device and must be filled from that already wrapped parent."""
        ...

    def unwrap(self, net: nn.Module) -> nn.Module:
        """The module whose ``state_dict`` names match the unwrapped network."""
        ...

    def gradient_sync(self, net: nn.Module, enabled: bool) -> Any:
        """A context manager: while ``enabled`` is False gradients only accumulate locally."""
        ...

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Sum ``x`` over all ranks in place and return it."""
        ...


# -- optional parts -------------------------------------------------------------------------------------
# Each is asked for only when present; the accessor after each protocol is the one way to read it.


@runtime_checkable
class Configured(Protocol):
    """A built component that keeps the validated config it was built from (the engine reads optional
    config parts, such as a loss's :class:`HasReduction`, through it)."""

    config: Any


@runtime_checkable
class ChecksRecipe(Protocol):
    """Optional on any component's config: problems it finds with the rest of the validated recipe.

    Called by the recipe validator (:func:`rcm_registry.recipe.validate.validate_recipe`, so by every
    command that reads a recipe) once everything else is valid, for every component of the recipe's
    sections. ``where`` is the phase name for losses, the section's YAML path otherwise; each returned
    line is reported with the component's path.
    """

    def check_recipe(self, recipe: Any, where: str) -> list[str]: ...


def recipe_problems(config: object, recipe: Any, where: str) -> list[str]:
    """The problems ``config``'s :class:`ChecksRecipe` finds (none when it has no ``check_recipe``)."""
    if not isinstance(config, ChecksRecipe):
        return []
    return list(config.check_recipe(recipe, where) or ())


@attrs.frozen
class DataCheck:
    """What :class:`ChecksData` found: problems (each naming the file, and the member or key where known)
    and notes (e.g. files it skipped) that do not stop a run."""

    problems: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)


@runtime_checkable
class ChecksData(Protocol):
    """Optional on a dataset config: problems of the files the dataset would read, found without loading them
    (headers, sizes, member lists).

    Called by ``rcm validate`` and ``rcm run`` (:func:`rcm_registry.commands._shared.load_validated_recipe`)
    after the recipe validated and before a run directory exists. Not part of recipe validation itself,
    which opens no files: a recipe read back from a checkpoint (``rcm sample``, ``rcm generate``) must
    validate where its training data is gone.
    """

    def check_data(self) -> DataCheck: ...


def data_check(config: object) -> DataCheck:
    """``config.check_data()`` (:class:`ChecksData`); nothing found when the config has no such check."""
    if not isinstance(config, ChecksData):
        return DataCheck()
    return config.check_data()


@attrs.frozen
class ConversionSummary:
    """What :class:`ConvertsData` did: shards written now, shards an earlier run left complete (kept), shards
    still to do (``max_shards``), and the samples and shards of the output's index."""

    written: int
    kept: int
    remaining: int
    samples: int
    shards: int


@runtime_checkable
class ConvertsData(Protocol):
    """Optional on a dataset config: rewrite the data it names as latent shards (``rcm convert-data``).

    ``out`` is a latent-shard directory (``rcm_plugins.data.latent_shards_format``) of ``shard_size``
    samples a shard, written shard by shard (each whole or not at all), so a rerun continues an
    interrupted conversion; ``max_shards`` stops after writing that many. ``progress`` gets one line per
    shard. A problem of the input or of ``out`` raises a :class:`UserError` naming the file.
    """

    def convert_data(
        self, out: Path, *, shard_size: int, max_shards: int | None, progress: Callable[[str], None]
    ) -> ConversionSummary: ...


def data_conversion(config: object) -> Callable[..., ConversionSummary] | None:
    """``config.convert_data`` (:class:`ConvertsData`), or None when the dataset cannot be converted."""
    return config.convert_data if isinstance(config, ConvertsData) else None


@runtime_checkable
class HasReduction(Protocol):
    """Optional on a loss config: whether the loss is a batch ``mean`` (the default) or a batch ``sum``.

    Read by the trainer on every step to combine the slices of a data-parallel or accumulated batch: a
    slice's mean is divided by the number of slices, a slice's sum is added as it is (see :class:`Parallel`).
    """

    reduction: Reduction


def loss_reduction(loss: object) -> Reduction:
    """``loss.config.reduction`` (:class:`HasReduction`), ``"mean"`` when the loss's config has none.

    Anything other than ``mean`` or ``sum`` is a :class:`UserError`: the batch would be combined wrongly.
    """
    config = loss.config if isinstance(loss, Configured) else None
    if not isinstance(config, HasReduction):
        return "mean"
    value = config.reduction
    if value not in ("mean", "sum"):
        raise UserError(f"loss {type(loss).__name__}: reduction must be 'mean' or 'sum', got {value!r}")
    return value


@runtime_checkable
class DeclaresRequirements(Protocol):
    """Optional on a rollout config: what the rollout needs from the rest of the recipe (networks, time
    samplers, ...), as the ``distill`` area's ``Requirements`` (its loss configs declare theirs the same way).

    Read by the losses that call the rollout (in their ``check_recipe``, during recipe validation), which
    merge these needs into their own so that the recipe is checked for both.
    """

    def requirements(self) -> Any: ...


def declared_requirements(config: object) -> Any | None:
    """``config.requirements()`` (:class:`DeclaresRequirements`), or None when the config declares none."""
    return config.requirements() if isinstance(config, DeclaresRequirements) else None


@runtime_checkable
class CountsAttentionHeads(Protocol):
    """Optional on a network config: the number of attention heads of the network it builds.

    Read by the ``fsdp2`` strategy's ``check_recipe`` (recipe validation) to check that ``context_parallel``
    divides the heads. It may raise (e.g. when it reads a weights folder that is not there yet); the
    caller then skips the check and building the network reports the problem.
    """

    def attention_heads(self) -> int: ...


def attention_heads(config: object) -> int | None:
    """``config.attention_heads()`` (:class:`CountsAttentionHeads`), or None when the config cannot say."""
    if not isinstance(config, CountsAttentionHeads) or not callable(config.attention_heads):
        return None
    return config.attention_heads()


@runtime_checkable
class DeclaresConditions(Protocol):
    """Optional on a network config: the condition keys besides ``text`` the network needs.

    ``condition_shapes(latent_shape)`` maps each key to its per-sample shape for latents of
    ``latent_shape`` (C, T, H, W), with None for a size that may vary (e.g. Wan2.1 I2V: ``image`` and
    ``image_latent``). ``rcm synth`` checks the conditions it is given against it before sampling.
    """

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> Mapping[str, Sequence[int | None]]: ...


def condition_shapes(config: object, latent_shape: Sequence[int]) -> dict[str, tuple[int | None, ...]] | None:
    """``config.condition_shapes`` (:class:`DeclaresConditions`) as tuples, or None when the config does not say."""
    if not isinstance(config, DeclaresConditions):
        return None
    return {key: tuple(shape) for key, shape in config.condition_shapes(tuple(latent_shape)).items()}


@runtime_checkable
class ReportsLayout(Protocol):
    """Optional on a :class:`Parallel` strategy: how the run is spread, as JSON-friendly values
    (world size, data and context parallel sizes, accumulation, ...).

    Read once by the trainer when training starts, on rank 0, for the ``training`` log line.
    """

    def describe(self) -> dict[str, Any]: ...


def parallel_layout(parallel: object | None) -> dict[str, Any]:
    """``parallel.describe()`` (:class:`ReportsLayout`); empty without a strategy or a description."""
    return dict(parallel.describe()) if isinstance(parallel, ReportsLayout) else {}


@runtime_checkable
class Exportable(Protocol):
    """Optional on a :class:`Network`: write itself as a checkpoint directory of its family.

    Called by ``rcm export`` on the run's unwrapped network (on the CPU). ``format`` is ``diffusers`` or
    ``native``; the directory appears complete or not at all, and an existing one is an error unless
    ``overwrite``. Raises FileExistsError or ValueError for a bad output (reported against ``--out``).
    """

    def export(
        self,
        out: str | os.PathLike[str],
        *,
        format: Literal["diffusers", "native"] = "diffusers",
        dtype: torch.dtype | None = None,
        overwrite: bool = False,
    ) -> Path: ...


def network_export(net: object) -> Callable[..., Path] | None:
    """``net.export`` (:class:`Exportable`), or None when the network cannot export itself."""
    return net.export if isinstance(net, Exportable) and callable(net.export) else None


@runtime_checkable
class KeepsPrecision(Protocol):
    """Optional on a network: the modules inside its ``blocks`` that FP8 inference (``inference.fp8_linear``)
    leaves in their precision, e.g. layers a float32 path reads through ``.weight`` or whose inputs are one
    row a sample (a modulation head of the time embedding), where FP8 saves no time and dequantising costs."""

    def fp8_exempt(self) -> Iterable[Any]: ...


def fp8_exempt(net: object) -> list[Any]:
    """``net.fp8_exempt()`` (:class:`KeepsPrecision`), or nothing when the network names none."""
    return list(net.fp8_exempt()) if isinstance(net, KeepsPrecision) else []


@runtime_checkable
class Closable(Protocol):
    """Optional on a :class:`Dataset`: release open files or worker processes.

    Called by ``rcm generate`` after it opened the training data only to read its ``sample_shape``.
    """

    def close(self) -> None: ...


def close_dataset(dataset: object) -> None:
    """``dataset.close()`` (:class:`Closable`) when the dataset has it."""
    if isinstance(dataset, Closable) and callable(dataset.close):
        dataset.close()


@runtime_checkable
class WritesSynthData(Protocol):
    """Optional on a dataset config: the dataset can be written by ``rcm synth``.

    Called by ``rcm synth`` once the recipe is valid, with the ``--out`` directory; the store it returns
    (:class:`SynthStore`) reads the prompt file and writes the teacher's samples (``latent_shards`` does).
    """

    def synth_store(self, root: Path) -> SynthStore: ...


def synth_store(config: object, root: Path) -> SynthStore | None:
    """``config.synth_store(root)`` (:class:`WritesSynthData`), or None when the dataset cannot be written."""
    if not isinstance(config, WritesSynthData):
        return None
    return config.synth_store(root)


# -- what datasets, codecs and networks declare about their tensors (recipe validation) -----------------


@attrs.frozen
class SampleShapes:
    """What one sample looks like, per sample (no batch axis), read from configs and metadata only.

    Declared by a dataset config (its samples) and by a codec config (what it produces: a VAE the latents
    ``x0``, a text encoder the ``text`` condition). A size that varies, or that the declarer does not fix, is
    None.
    """

    #: Shape of x0, e.g. (C, T, H, W); None when the declarer says nothing about x0 (a text encoder).
    x0: tuple[int | None, ...] | None = None
    #: Condition keys -> per-sample shape (e.g. ``text``: (L, D); ``label``: ()).
    condition: Mapping[str, tuple[int | None, ...]] = attrs.field(factory=dict)
    #: Integer condition keys -> number of classes (labels 0 .. n − 1; the null label is n).
    classes: Mapping[str, int] = attrs.field(factory=dict)
    #: Where the shapes were read, for messages (e.g. ``DIR/index.json``); empty: the recipe's own values.
    source: str = ""


@runtime_checkable
class DescribesSamples(Protocol):
    """Optional on a dataset or codec config: :class:`SampleShapes` without reading any tensor.

    Called by recipe validation, which checks every network against them. It may raise a
    :class:`UserError` naming the file it could not read (a dataset directory that is not there).
    """

    def sample_shapes(self) -> SampleShapes: ...


def sample_shapes(config: object) -> SampleShapes | None:
    """``config.sample_shapes()`` (:class:`DescribesSamples`), or None when the config does not say."""
    return config.sample_shapes() if isinstance(config, DescribesSamples) else None


@attrs.frozen
class InputSpec:
    """What a network takes for one input, per sample: a size per axis (None: any), a number each axis
    must be a multiple of (the patch size), the axes' names for messages, and the classes of a label."""

    shape: tuple[int | None, ...]
    #: One name per axis, e.g. ("in_channels", "T", "H", "W").
    names: tuple[str, ...]
    multiple_of: tuple[int, ...] | None = None
    #: For an integer label: the number of classes of the embedding (labels 0 .. n − 1, null label n).
    classes: int | None = None
    #: Whether the network refuses to run without it.
    required: bool = True


@attrs.frozen
class NetworkInputs:
    """What a network accepts: ``x`` (the noisy sample, shaped like x0) and its condition keys."""

    x: InputSpec
    condition: Mapping[str, InputSpec] = attrs.field(factory=dict)
    #: Condition keys besides these are refused (False: the network takes any other keyword).
    closed: bool = True
    #: The head dim of its attentions and the attention backend's config they call, for the backend's limits.
    head_dim: int | None = None
    attention: Any = None
    #: Number of attention heads, and the model width they split (None: the network does not say).
    heads: int | None = None
    width: int | None = None


@runtime_checkable
class DeclaresInputs(Protocol):
    """Optional on a network config: the :class:`NetworkInputs` of the network it builds, from the config
    (and a weights folder's config.json) without building it. A ValueError or UserError it raises is a
    problem of the config, reported against the network's YAML path."""

    def network_inputs(self) -> NetworkInputs: ...


def network_inputs(config: object) -> NetworkInputs | None:
    """``config.network_inputs()`` (:class:`DeclaresInputs`), or None when the config does not say."""
    return config.network_inputs() if isinstance(config, DeclaresInputs) else None


@runtime_checkable
class CountsParameters(Protocol):
    """Optional on a network config: the number of parameters of the network it builds (counted on the meta
    device or by arithmetic, never allocated), for the memory estimate made before a run starts."""

    def parameter_count(self) -> int: ...


def parameter_count(config: object) -> int | None:
    """``config.parameter_count()`` (:class:`CountsParameters`), or None when the config does not say."""
    return int(config.parameter_count()) if isinstance(config, CountsParameters) else None


@runtime_checkable
class LimitsHeadDim(Protocol):
    """Optional on an attention config: why a head dim cannot run on this backend (None when it can)."""

    def head_dim_problem(self, head_dim: int) -> str | None: ...


def head_dim_problem(config: object, head_dim: int) -> str | None:
    """``config.head_dim_problem(head_dim)`` (:class:`LimitsHeadDim`), or None when the backend has no limit."""
    return config.head_dim_problem(head_dim) if isinstance(config, LimitsHeadDim) else None


@runtime_checkable
class InferenceOnly(Protocol):
    """Optional on an attention config: the backend cannot train (no backward); says why and what to do."""

    def inference_only(self) -> str: ...


def inference_only(config: object) -> str | None:
    """``config.inference_only()`` (:class:`InferenceOnly`), or None for a backend that trains."""
    return config.inference_only() if isinstance(config, InferenceOnly) else None


@runtime_checkable
class LogsImages(Protocol):
    """Optional on a :class:`Logger`: it takes pictures.

    Called on rank 0 every ``run.sample_every`` iterations with the picture of the output network's samples
    (the recipe's ``sample`` sampler), ``tag`` naming it (``samples``), as (H, W, 3) uint8 RGB.
    """

    def log_image(self, iteration: int, tag: str, image: Any) -> None: ...


def image_logger(logger: object) -> Callable[[int, str, Any], None] | None:
    """``logger.log_image`` (:class:`LogsImages`), or None when the logger takes no pictures."""
    return logger.log_image if isinstance(logger, LogsImages) and callable(logger.log_image) else None
