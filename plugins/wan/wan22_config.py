"""Recipe schema of the Wan2.2 network components (A14B experts, TI2V-5B) and their factories."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import attrs
from rcm_plugins.common.loading import WeightsFormat
from rcm_plugins.common.network_config import arch_fields, build_network, check_weights_kind
from rcm_plugins.wan import checkpoint, wan22_checkpoint
from rcm_plugins.wan.config import REQUIRED, WanFields, preset
from rcm_plugins.wan.experts import EXPERTS, HIGH_NOISE, Expert, WanExperts
from rcm_plugins.wan.model import TIMESTEP_SCALE, WanArch
from rcm_plugins.wan.ti2v_model import WanTI2VNetwork

from rcm_registry import schema
from rcm_registry.protocols import InputSpec

A14BSize = Literal["a14b", "tiny"]
TI2VSize = Literal["5b", "tiny"]

# Published hyper-parameters: Wan2.2 repository, wan/configs/wan_t2v_A14B.py, wan_i2v_A14B.py and
# wan_ti2v_5B.py, and the diffusers repositories' transformer/config.json. Each A14B expert is shaped as
# Wan2.1-14B (dim 5120, ffn 13824, 40 heads, 40 layers); the I2V experts take 36 input channels (16 noisy
# + 4 mask + 16 image latents) and, unlike Wan2.1 I2V, no CLIP image tokens. The 5B: dim 3072, ffn 14336,
# 24 heads, 30 layers, on the Wan2.2 VAE's 48-channel latents. Text: umT5-XXL (4096), freq_dim 256, patch
# (1, 2, 2), eps 1e-6, qk_norm and cross_attn_norm on, as in Wan2.1.
_A14B: dict[str, dict[str, Any]] = {"a14b": preset("14B", i2v=False), "tiny": preset("tiny", i2v=False)}
_TI2V: dict[str, dict[str, Any]] = {
    "5b": {"dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_channels": 48, "out_channels": 48},
    "tiny": {**preset("tiny", i2v=False), "in_channels": 48, "out_channels": 48},
}
#: Input channels of an I2V-A14B expert: the noisy latents and the 20 conditioning channels.
_I2V_CHANNELS = 36
#: The expert boundary (diffusers' boundary_ratio) of the published A14B models.
DEFAULT_BOUNDARY = {"t2v": 0.875, "i2v": 0.9}


@attrs.define(kw_only=True)
class WanA14BConfig(WanFields):
    """Wan2.2-T2V-A14B: two experts switched at ``boundary``; ``size`` (or the weights' config.json files)
    plus optional overrides of any architecture field (both experts have the same)."""

    size: A14BSize | None = None
    #: The experts the network holds: ``both``, or one of them for a recipe that distils it alone (its time
    #: samplers, rollout and sampler must stay inside the expert's interval: see ``check_recipe``).
    expert: Literal["both", "high_noise", "low_noise"] = "both"
    #: Timesteps t ≥ boundary·1000 go to the high-noise expert (diffusers' boundary_ratio); default 0.875
    #: (T2V) or 0.9 (I2V). A diffusers repository's model_index.json must agree.
    boundary: float | None = attrs.field(
        default=None, validator=schema.in_range(0.0, 1.0, low_open=True, high_open=True)
    )

    model_type = "t2v"

    def __attrs_post_init__(self) -> None:
        self.check_fields(get_args(A14BSize))

    def experts(self) -> tuple[Expert, ...]:
        return EXPERTS if self.expert == "both" else (self.expert,)

    def boundary_ratio(self) -> float:
        return self.boundary if self.boundary is not None else DEFAULT_BOUNDARY[self.model_type]

    def architecture(self) -> WanArch:
        return resolve_a14b(self)

    def transformers(self) -> int:
        return len(self.experts())

    def attention_heads(self) -> int:
        """Heads of every attention (context parallel must divide it); read from config.json with weights."""
        return resolve_a14b(self).num_heads

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """Per-sample shapes of the conditions besides ``text`` (``rcm synth`` checks it can give them)."""
        return {}

    def check_recipe(self, recipe: Any, where: str) -> list[str]:
        """With one expert, every time the recipe evaluates the network at must be in that expert's interval.

        Checked: the time samplers (``time.ROLE``; one whose config has no ``low``/``high`` bounds, such as
        ``lognormal`` or ``uniform_shift``, can draw any t), the rollout's start time (``sigma_max``) and the
        sampler's times. Intervals in TrigFlow time through the teacher wrapper's ``t_scale``
        (timestep = t_scale·sin t/(cos t + sin t)).
        """
        if self.expert == "both":
            return []
        wrapper = recipe.body.teacher_wrapper
        t_scale = float(getattr(wrapper.config, "t_scale", TIMESTEP_SCALE)) if wrapper is not None else TIMESTEP_SCALE
        s = min(self.boundary_ratio() * TIMESTEP_SCALE / t_scale, 1.0)
        edge = math.atan2(s, 1.0 - s)  # TrigFlow time of the boundary
        high = self.expert == HIGH_NOISE
        owned = f"[{edge:.4f}, π/2]" if high else f"[0, {edge:.4f})"

        def inside(low: float, top: float) -> bool:
            return low >= edge if high else top < edge

        problems = []
        for role, spec in recipe.body.time.items():
            low, top = getattr(spec.config, "low", None), getattr(spec.config, "high", None)
            if low is None or top is None or not inside(float(low), float(top)):
                drawn = "any t in (0, π/2)" if low is None or top is None else f"t in [{low}, {top}]"
                problems.append(
                    f"time.{role} ({spec.name}) draws {drawn}, and the {self.expert} expert alone owns TrigFlow "
                    f"times {owned} (boundary {self.boundary_ratio():g}): use e.g. `{{use: uniform, low: ..., "
                    "high: ...}` inside it"
                )
        rollout = recipe.body.rollout
        if rollout is not None and hasattr(rollout.config, "sigma_max"):
            sigma = rollout.config.sigma_max
            start = math.pi / 2 if sigma is None else math.atan(sigma)
            if not inside(start, start):
                problems.append(
                    f"rollout ({rollout.name}) starts at t = {start:.4f}, outside the {self.expert} expert's {owned}: "
                    f"set rollout.sigma_max so that arctan(sigma_max) is inside it"
                )
        sampler = recipe.body.sample
        times = getattr(sampler.config, "times", None) if sampler is not None else None
        if callable(times):
            evaluated = [t for t in times() if t > 0.0]
            if evaluated and not all(inside(t, t) for t in evaluated):
                problems.append(
                    f"sample ({sampler.name}) evaluates the network at t = {', '.join(f'{t:.4f}' for t in evaluated)}, "
                    f"and the {self.expert} expert owns {owned}: set its sigma_max and mid_times inside it"
                )
        return problems


@attrs.define(kw_only=True)
class WanI2VA14BConfig(WanA14BConfig):
    """Wan2.2-I2V-A14B: the experts also take 20 conditioning latent channels (mask and image latents)."""

    model_type = "i2v"

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """``image_latent``: 4 mask channels and the encoded first frame, as Wan's I2V pipelines build them."""
        arch = resolve_a14b(self)
        channels, *rest = latent_shape
        return {"image_latent": (arch.in_channels - channels, *rest)}


@attrs.define(kw_only=True)
class WanTI2VConfig(WanFields):
    """Wan2.2-TI2V-5B: text-to-video, or with ``first_frame`` image-to-video by first-frame conditioning."""

    size: TI2VSize | None = None
    #: Condition on the first latent frame (condition key ``first_frame``, (48, 1, H, W) per sample).
    first_frame: bool = False

    def __attrs_post_init__(self) -> None:
        self.check_fields(get_args(TI2VSize))

    def architecture(self) -> WanArch:
        return resolve_ti2v(self)

    def extra_inputs(self, arch: WanArch) -> dict[str, InputSpec]:
        """``first_frame`` (C, 1, H, W) with ``first_frame: true``."""
        if not self.first_frame:
            return {}
        _, ph, pw = arch.patch_size
        shape = (arch.in_channels, 1, None, None)
        return {"first_frame": InputSpec(shape=shape, names=("in_channels", "T", "H", "W"), multiple_of=(1, 1, ph, pw))}

    def attention_heads(self) -> int:
        return resolve_ti2v(self).num_heads

    def condition_shapes(self, latent_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """``first_frame``: the latents of the conditioning image, one latent frame."""
        if not self.first_frame:
            return {}
        channels, _, *space = latent_shape
        return {"first_frame": (channels, 1, *space)}


def resolve_a14b(config: WanA14BConfig) -> WanArch:
    """Each expert's architecture: ``size`` preset, else the weights' config.json files; fields override."""
    i2v = config.model_type == "i2v"
    fields = arch_fields(
        config,
        WanArch,
        REQUIRED,
        defaults={"in_channels": _I2V_CHANNELS} if i2v else {},
        preset=lambda size: {**_A14B[size], **({"in_channels": _I2V_CHANNELS} if i2v else {})},
        from_weights=lambda w: wan22_checkpoint.arch_from_experts(w.path, w.format, config.experts()),
    )
    fields["image_dim"] = None
    return WanArch(**fields)


def resolve_ti2v(config: WanTI2VConfig) -> WanArch:
    """The 5B's architecture: ``size`` preset, else the weights' config.json; fields override."""
    fields = arch_fields(
        config,
        WanArch,
        REQUIRED,
        defaults={"in_channels": 48, "out_channels": 48},
        preset=lambda size: _TI2V[size],
        from_weights=lambda w: _ti2v_arch(w.path, w.format),
    )
    fields["image_dim"] = None
    return WanArch(**fields)


def _ti2v_arch(path: str, format: WeightsFormat) -> WanArch:
    folder = wan22_checkpoint.transformer_checkpoint(path, format)
    return checkpoint.arch_from_checkpoint(folder, format, release="2.2", sizes="5b, tiny")


def build_a14b(config: WanA14BConfig) -> WanExperts:
    """The experts network; with weights, built on the meta device first so parameters are allocated once."""
    arch = resolve_a14b(config)
    check_weights_kind(
        config,
        REQUIRED,
        wanted=config.model_type == "i2v",
        found=lambda w: (
            wan22_checkpoint.model_type(wan22_checkpoint.arch_from_experts(w.path, w.format, config.experts())) == "i2v"
        ),
        names=("wan2.2-t2v-a14b", "wan2.2-i2v-a14b"),
    )
    attention = config.attention.build()
    return build_network(
        lambda: WanExperts(
            arch,
            attention,
            boundary=config.boundary_ratio(),
            experts=config.experts(),
            **config.network_options(),
        ),
        config.weights,
        wan22_checkpoint.load_experts,
    )


def build_ti2v(config: WanTI2VConfig) -> WanTI2VNetwork:
    arch = resolve_ti2v(config)
    attention = config.attention.build()
    return build_network(
        lambda: WanTI2VNetwork(arch, attention, **config.network_options()),
        config.weights,
        wan22_checkpoint.load_ti2v,
    )
