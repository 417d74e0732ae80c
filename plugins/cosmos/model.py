"""The Cosmos-Predict2 diffusion transformer (Text2Image and Video2World), written for forward-mode AD.

Architecture (NVIDIA, Cosmos-Predict2 ``MiniTrainDIT``; diffusers ``CosmosTransformer3DModel``):

* patch embedding (1, 2, 2): a bias-free linear map of each flattened (c, t, h, w) patch; its input has
  one extra channel for the padding mask (``concat_padding_mask``) and, for Video2World, one for the
  condition mask that marks the conditioning frames;
* time: a sinusoid of the model width → RMSNorm gives the embedding ``e``; an MLP (D → D → 3D, no
  biases) gives the AdaLN-LoRA term shared by every modulation;
* blocks of self-attention (q/k RMSNorm per head, 3-D RoPE with NTK-scaled bases and fps-rescaled
  time), cross-attention to T5 text tokens (1024-d), and a GELU MLP; each sub-layer is
  ``x + gate·f(LN(x)·(1 + scale) + shift)`` with (shift, scale, gate) = ``W₂W₁·SiLU(e) + lora``
  (AdaLN-LoRA: a rank-256 factorisation per sub-layer);
* an optional learnable absolute position embedding (per-axis tables summed and RMS-normalised) added
  before every block;
* final layer: AdaLN (2-way) + a bias-free linear head, then unpatchify.

Timesteps may be (B,) or per latent frame (B, T): Video2World tells its conditioning frames a near-zero
noise level, so the modulation varies along time and is broadcast over each frame's tokens.

Parameter names equal the native Cosmos-Predict2 checkpoint layout (``blocks.0.self_attn.q_proj.weight``
...), so native files load without renaming; :mod:`rcm_plugins.cosmos.checkpoint` maps to and from the
diffusers layout.

Numerics: the time path, the norms, the modulation and the gated residual additions run in at least
float32; RoPE angles are formed in float64. No complex tensors, so ``torch.autograd.forward_ad`` and
``torch.func.jvp`` work through the network, provided the attention backend does.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from rcm_plugins.common.checkpointing import CheckpointedBlocks, Setting, run_checkpointed
from rcm_plugins.common.export import ExportableNetwork, Layouts
from rcm_plugins.common.fused_ops import gated_residual, modulated_layer_norm, rms_norm_rope
from rcm_plugins.common.inputs import check_latents, check_tokens
from rcm_plugins.common.layers import (
    Linear,
    RMSNorm,
    UpcastLayerNorm,
    compute_dtype,
    heads_first,
    linear_in,
    merge_heads,
    sinusoidal_embedding,
)
from rcm_plugins.common.rope import axis_pairs, ntk_theta, rope_tables
from torch import Tensor, nn

#: Cosmos-Predict2's pipelines pad T5-11B text embeddings to this many tokens (the network takes any length).
TEXT_TOKENS = 512
#: The frame rate at which temporal RoPE positions are unscaled (the original's ``base_fps``).
BASE_FPS = 24.0


@attrs.frozen
class CosmosArch:
    """Architecture hyper-parameters of a Cosmos-Predict2 transformer."""

    num_heads: int
    head_dim: int
    num_layers: int
    #: Latent channels of x (the mask channels come on top).
    in_channels: int = 16
    out_channels: int = 16
    mlp_ratio: float = 4.0
    text_dim: int = 1024
    adaln_lora_dim: int = 256
    #: Largest (frames, height, width) in latent units; sizes the learnable position tables.
    max_size: tuple[int, int, int] = attrs.field(default=(128, 240, 240), converter=tuple)
    patch_size: tuple[int, int, int] = attrs.field(default=(1, 2, 2), converter=tuple)
    #: RoPE extrapolation ratios (time, height, width) for the NTK base scaling.
    rope_scale: tuple[float, float, float] = attrs.field(default=(1.0, 4.0, 4.0), converter=tuple)
    concat_padding_mask: bool = True
    learnable_pos_embed: bool = False
    #: Video2World: one more input channel, the condition mask.
    condition_mask: bool = False
    #: eps of the per-head q/k RMSNorm: 1e-6 in the original; diffusers' Attention builds it with 1e-5.
    qk_norm_eps: float = 1e-6

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.head_dim % 2 or self.head_dim < 12:
            problems.append(f"head_dim {self.head_dim} must be even and >= 12 (3-D RoPE with NTK scaling)")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            problems.append(f"patch_size {self.patch_size} must be three positive ints")
        if len(self.rope_scale) != 3 or min(self.rope_scale) <= 0:
            problems.append(f"rope_scale {self.rope_scale} must be three positive numbers")
        if len(self.max_size) != 3 or any(m < p for m, p in zip(self.max_size, self.patch_size, strict=False)):
            problems.append(f"max_size {self.max_size} must be three sizes of at least the patch size")
        if self.patch_size[0] != 1:
            problems.append("temporal patch size must be 1 (per-frame timesteps need one token row per frame)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def embed_channels(self) -> int:
        """Channels the patch embedding sees: latents, then the condition mask, then the padding mask."""
        return self.in_channels + int(self.condition_mask) + int(self.concat_padding_mask)

    @property
    def max_grid(self) -> tuple[int, int, int]:
        return tuple(m // p for m, p in zip(self.max_size, self.patch_size, strict=True))  # type: ignore[return-value]

    @property
    def v2w(self) -> bool:
        return self.condition_mask


Attn = Any  # an attention backend object: attn(q, k, v, *, scale=None) with (B, H, S, D) inputs


class Patchify(nn.Module):
    """(B, C, T, H, W) → (B, S, C·pt·ph·pw) with features in (c, t, h, w) order and tokens in (t, h, w) order."""

    def __init__(self, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        patches = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return patches.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


class PatchEmbed(nn.Module):
    def __init__(self, arch: CosmosArch) -> None:
        super().__init__()
        # Index 0 is the parameter-free rearrangement, so the linear map is ``proj.1`` as in native files.
        self.proj = nn.Sequential(
            Patchify(arch.patch_size), Linear(arch.embed_channels * math.prod(arch.patch_size), arch.dim, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TimestepEmbedding(nn.Module):
    """The AdaLN-LoRA MLP on the sinusoid: D → D → 3D, bias-free (``t_embedder.1``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = Linear(dim, dim, bias=False)
        self.linear_2 = Linear(dim, 3 * dim, bias=False)


def _norm_rope(norm: RMSNorm, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """Cosmos' per-head q/k RMS norm of (B, S, H, D), then RoPE on channel halves ("rotate half")."""
    return rms_norm_rope(x, norm.weight, rope, norm.eps, per_head=True, interleaved=False)


class Attention(nn.Module):
    """Self- (``context_dim=None``) or cross-attention with per-head q/k RMSNorm, bias-free projections."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, eps: float, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = num_heads * head_dim
        kv_in = dim if context_dim is None else context_dim
        self.q_proj = Linear(dim, inner, bias=False)
        self.k_proj = Linear(kv_in, inner, bias=False)
        self.v_proj = Linear(kv_in, inner, bias=False)
        self.output_proj = Linear(inner, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x: Tensor, context: Tensor | None, rope: tuple[Tensor, Tensor] | None, attn: Attn) -> Tensor:
        heads = (self.num_heads, -1)
        kv = x if context is None else context
        q = _norm_rope(self.q_norm, self.q_proj(x).unflatten(-1, heads), rope)
        k = _norm_rope(self.k_norm, self.k_proj(kv).unflatten(-1, heads), rope)
        v = self.v_proj(kv).unflatten(-1, heads)
        return self.output_proj(merge_heads(attn(heads_first(q), heads_first(k), heads_first(v))))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = Linear(dim, hidden, bias=False)
        self.layer2 = Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(F.gelu(self.layer1(x)))


def _adaln(dim: int, rank: int, chunks: int) -> nn.Sequential:
    """SiLU → D → rank → chunks·D, bias-free: one AdaLN-LoRA modulation head."""
    return nn.Sequential(nn.SiLU(), Linear(dim, rank, bias=False), Linear(rank, chunks * dim, bias=False))


def _modulation(head: nn.Sequential, e: Tensor, lora: Tensor) -> Tensor:
    """``W₂W₁·SiLU(e) + lora`` in e's dtype (the time dtype, >= float32)."""
    td = e.dtype
    return linear_in(linear_in(F.silu(e), head[1], td), head[2], td) + lora


def _modulate(norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # shift, scale: (B, F, 1, D) in the time dtype, one row per group of S/F consecutive tokens.
    return modulated_layer_norm(x, 1 + scale.squeeze(2), shift.squeeze(2), norm.eps, groups=shift.shape[1])


def _gated_add(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    return gated_residual(x, y, gate.squeeze(2), groups=gate.shape[1])


class Block(nn.Module):
    def __init__(self, arch: CosmosArch) -> None:
        super().__init__()
        dim = arch.dim
        self.layer_norm_self_attn = UpcastLayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.self_attn = Attention(dim, arch.num_heads, arch.head_dim, arch.qk_norm_eps)
        self.layer_norm_cross_attn = UpcastLayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.cross_attn = Attention(dim, arch.num_heads, arch.head_dim, arch.qk_norm_eps, context_dim=arch.text_dim)
        self.layer_norm_mlp = UpcastLayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = FeedForward(dim, arch.mlp_dim)
        self.adaln_modulation_self_attn = _adaln(dim, arch.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _adaln(dim, arch.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _adaln(dim, arch.adaln_lora_dim, 3)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        lora: Tensor,
        rope: tuple[Tensor, Tensor],
        context: Tensor,
        extra_pos: Tensor | None,
        attn: Attn,
    ) -> Tensor:
        # e: (B, F, 1, D) and lora: (B, F, 1, 3D) in the time dtype, F = 1 or one row per latent frame.
        if extra_pos is not None:
            x = x + extra_pos
        shift, scale, gate = _modulation(self.adaln_modulation_self_attn, e, lora).chunk(3, dim=-1)
        h = _modulate(self.layer_norm_self_attn, x, shift, scale)
        x = _gated_add(x, self.self_attn(h, None, rope, attn), gate)
        shift, scale, gate = _modulation(self.adaln_modulation_cross_attn, e, lora).chunk(3, dim=-1)
        h = _modulate(self.layer_norm_cross_attn, x, shift, scale)
        x = _gated_add(x, self.cross_attn(h, context, None, attn), gate)
        shift, scale, gate = _modulation(self.adaln_modulation_mlp, e, lora).chunk(3, dim=-1)
        h = _modulate(self.layer_norm_mlp, x, shift, scale)
        return _gated_add(x, self.mlp(h), gate)


class FinalLayer(nn.Module):
    def __init__(self, arch: CosmosArch) -> None:
        super().__init__()
        self.dim = arch.dim
        self.layer_norm = UpcastLayerNorm(arch.dim, eps=1e-6, elementwise_affine=False)
        self.linear = Linear(arch.dim, arch.out_channels * math.prod(arch.patch_size), bias=False)
        self.adaln_modulation = _adaln(arch.dim, arch.adaln_lora_dim, 2)

    def forward(self, x: Tensor, e: Tensor, lora: Tensor) -> Tensor:
        shift, scale = _modulation(self.adaln_modulation, e, lora[..., : 2 * self.dim]).chunk(2, dim=-1)
        return self.linear(_modulate(self.layer_norm, x, shift, scale))


class LearnablePosEmbed(nn.Module):
    """Per-axis learned tables, summed over the (t, h, w) grid and RMS-normalised per token."""

    def __init__(self, arch: CosmosArch, eps: float = 1e-6) -> None:
        super().__init__()
        t, h, w = arch.max_grid
        self.eps = eps
        self.pos_emb_t = nn.Parameter(torch.zeros(t, arch.dim))
        self.pos_emb_h = nn.Parameter(torch.zeros(h, arch.dim))
        self.pos_emb_w = nn.Parameter(torch.zeros(w, arch.dim))

    def forward(self, grid: tuple[int, int, int], dtype: torch.dtype) -> Tensor:
        """(S, D) in ``dtype`` (>= float32): emb / (eps + ‖emb‖₂/√D), the original's normalisation."""
        t, h, w = grid
        emb = (
            self.pos_emb_t[:t].to(dtype)[:, None, None]
            + self.pos_emb_h[:h].to(dtype)[None, :, None]
            + self.pos_emb_w[:w].to(dtype)[None, None, :]
        ).flatten(0, 2)
        norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True)
        return emb / (self.eps + norm / math.sqrt(emb.shape[-1]))


class _Sinusoid(nn.Module):
    """Placeholder for the original's parameter-free ``Timesteps`` module (``t_embedder.0``)."""


class CosmosNetwork(CheckpointedBlocks, ExportableNetwork, nn.Module):
    """Cosmos-Predict2 transformer: ``net(x, timestep, text, condition_mask=None, padding_mask=None, fps=None)``.

    Args:
        arch: the architecture.
        attention: the attention backend object (from the config's ``attention`` component).
        fps: frame rate assumed when a call gives none (None: unscaled temporal positions, as for images).
        activation_checkpointing: recompute activations of each block in the backward pass (training with grad
            only): ``none``/``selective``/``block``/``auto`` or a bool (true = block); see
            :mod:`rcm_plugins.common.checkpointing`.
    """

    def __init__(
        self, arch: CosmosArch, attention: Attn, *, fps: float | None = None, activation_checkpointing: Setting = False
    ) -> None:
        super().__init__()
        self.arch = arch
        self.attention = attention
        self.default_fps = fps
        self.activation_checkpointing = activation_checkpointing
        dim = arch.dim
        self.x_embedder = PatchEmbed(arch)
        self.t_embedder = nn.Sequential(_Sinusoid(), TimestepEmbedding(dim))
        self.t_embedding_norm = RMSNorm(dim, eps=1e-6)
        if arch.learnable_pos_embed:
            self.extra_pos_embedder = LearnablePosEmbed(arch)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.final_layer = FinalLayer(arch)
        pairs = axis_pairs(arch.head_dim)
        self._thetas = tuple(ntk_theta(r, p) for r, p in zip(arch.rope_scale, pairs, strict=True))

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj[1].weight.dtype

    def time_embedding_of(self, timestep: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(e, lora) of shapes (B, F, D) and (B, F, 3D) in ``dtype`` for timesteps (B,) (F = 1) or (B, F)."""
        b = timestep.shape[0]
        flat = timestep.reshape(-1)
        sinusoid = sinusoidal_embedding(flat, self.arch.dim, dtype)
        mlp = self.t_embedder[1]
        lora = linear_in(F.silu(linear_in(sinusoid, mlp.linear_1, dtype)), mlp.linear_2, dtype)
        e = self.t_embedding_norm(sinusoid)
        return e.reshape(b, -1, e.shape[-1]), lora.reshape(b, -1, lora.shape[-1])

    def rope(
        self, grid: tuple[int, int, int], fps: Tensor | float | None, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """cos/sin tables (S, 1, head_dim/2); videos with an fps get time positions scaled by 24/fps."""
        if isinstance(fps, Tensor):
            # One table serves the batch, as in the original, which requires a uniform fps per batch.
            if fps.numel() > 1 and not bool((fps == fps.reshape(-1)[0]).all()):
                raise ValueError(f"fps must be the same for every sample of a batch, got {fps.tolist()}")
            fps_value = float(fps.reshape(-1)[0])
        else:
            fps_value = fps
        time_scale = 1.0 if fps_value is None else BASE_FPS / fps_value
        return rope_tables(
            grid, self.arch.head_dim, device=device, dtype=dtype, thetas=self._thetas, time_scale=time_scale
        )

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        text: Tensor,
        condition_mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
        fps: Tensor | float | None = None,
    ) -> Tensor:
        """Predict the rectified-flow velocity (Cosmos' denoiser reads it through its preconditioning).

        Args:
            x: (B, C, T, H, W) latents; H and W divisible by the patch size.
            timestep: (B,) or per latent frame (B, T), in the network's units (σ/(σ+1) ∈ [0, 1]).
            text: (B, L, text_dim) T5 tokens (the pipelines zero-pad them to 512).
            condition_mask: Video2World: (B, 1, T, H, W), 1 on conditioning frames; omitted means none
                (the original's image-batch path, a zero channel).
            padding_mask: (B or 1, 1, H', W'), resized to (H, W) by nearest neighbour; omitted means no
                padding (zeros, as every Cosmos-Predict2 pipeline passes).
            fps: frames per second of the video (a number, or a (B,) tensor with one value); default the
                network's ``fps``.

        Returns:
            (B, out_channels, T, H, W) in x's dtype.
        """
        arch = self.arch
        self._check_inputs(x, timestep, text, condition_mask)
        b, _, t, h, w = x.shape
        dtype = self.dtype
        td = compute_dtype(dtype)
        grid = (t // arch.patch_size[0], h // arch.patch_size[1], w // arch.patch_size[2])

        channels = [x.to(dtype)]
        if arch.condition_mask:
            mask = condition_mask if condition_mask is not None else x.new_zeros(b, 1, t, h, w)
            channels.append(mask.to(dtype).expand(b, 1, t, h, w))
        if arch.concat_padding_mask:
            channels.append(self._padding_channel(padding_mask, x, dtype))
        tokens = self.x_embedder(torch.cat(channels, dim=1))

        e, lora = self.time_embedding_of(timestep, td)
        e, lora = e.unsqueeze(2), lora.unsqueeze(2)
        rope = self.rope(grid, fps if fps is not None else self.default_fps, tokens.device, td)
        extra_pos = None
        if arch.learnable_pos_embed:
            extra_pos = self.extra_pos_embedder(grid, td).to(dtype)
        context = text.to(dtype)

        mode = self.checkpointing.mode(self, self.blocks, (tokens, e, lora, rope, context, extra_pos, self.attention))
        for block in self.blocks:
            tokens = run_checkpointed(block, mode, tokens, e, lora, rope, context, extra_pos, self.attention)
        return self.unpatchify(self.final_layer(tokens, e, lora), grid).to(x.dtype)

    def _padding_channel(self, padding_mask: Tensor | None, x: Tensor, dtype: torch.dtype) -> Tensor:
        b, _, t, h, w = x.shape
        if padding_mask is None:
            return x.new_zeros(b, 1, t, h, w, dtype=dtype)
        if padding_mask.ndim != 4 or padding_mask.shape[1] != 1 or padding_mask.shape[0] not in (1, b):
            raise ValueError(f"padding_mask must be (B or 1, 1, H, W), got {tuple(padding_mask.shape)}")
        m = padding_mask.to(dtype)
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="nearest")
        return m.unsqueeze(2).expand(b, 1, t, h, w)

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, S, ph·pw·pt·C) → (B, C, T, H, W); the head's features are (ph, pw, pt, C)-ordered."""
        b = tokens.shape[0]
        pt, ph, pw = self.arch.patch_size
        f, h, w = grid
        out = tokens.reshape(b, f, h, w, ph, pw, pt, -1).permute(0, 7, 1, 6, 2, 4, 3, 5)
        return out.reshape(b, -1, f * pt, h * ph, w * pw)

    @classmethod
    def checkpoint_layouts(cls) -> Layouts:
        """The Cosmos-Predict2 layouts that ``export`` (from :class:`ExportableNetwork`) writes."""
        from rcm_plugins.cosmos.checkpoint import LAYOUTS  # the checkpoint module imports this one

        return LAYOUTS

    def _check_inputs(self, x: Tensor, timestep: Tensor, text: Tensor, condition_mask: Tensor | None) -> None:
        arch = self.arch
        check_latents(x, arch.in_channels, arch.patch_size)
        b, frames = x.shape[0], x.shape[2] // arch.patch_size[0]
        if timestep.shape not in ((b,), (b, frames)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {frames}), got {tuple(timestep.shape)}")
        check_tokens("text", text, b, arch.text_dim)
        if condition_mask is not None:
            if not arch.condition_mask:
                raise ValueError("this is a Text2Image network: it takes no condition_mask (use cosmos-predict2-v2w)")
            if condition_mask.shape != (b, 1, *x.shape[2:]):
                raise ValueError(f"condition_mask must be {(b, 1, *x.shape[2:])}, got {tuple(condition_mask.shape)}")
        if arch.learnable_pos_embed:
            grid = tuple(n // p for n, p in zip(x.shape[2:], arch.patch_size, strict=True))
            if any(g > m for g, m in zip(grid, arch.max_grid, strict=True)):
                raise ValueError(f"token grid {grid} exceeds the position tables {arch.max_grid} (max_size)")

    def fp8_exempt(self) -> list[nn.Module]:
        """The blocks' AdaLN-LoRA modulation heads stay in their precision under FP8 inference: they read one
        time embedding a sample, in the float32 time path through their ``.weight`` (rcm_registry.protocols
        .KeepsPrecision), so FP8 would only add a dequantisation every call."""
        heads = ("adaln_modulation_self_attn", "adaln_modulation_cross_attn", "adaln_modulation_mlp")
        return [getattr(block, head) for block in self.blocks for head in heads]

    def extra_repr(self) -> str:
        a = self.arch
        return (
            f"dim={a.dim}, heads={a.num_heads}, layers={a.num_layers}, in={a.in_channels}, out={a.out_channels}, "
            f"v2w={a.v2w}, rope_scale={a.rope_scale}, attention={self.attention!r}"
        )
