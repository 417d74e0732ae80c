"""The Wan diffusion transformer (Wan2.1 T2V and I2V; each Wan2.2 expert), written for forward-mode AD.

Architecture (Wan team, "Wan: Open and Advanced Large-Scale Video Generative Models", 2025): a 3-D patch
embedding, a sinusoidal time embedding turned by an MLP into six per-block modulation vectors, blocks of
self-attention (RMSNorm on q and k across all heads, 3-D rotary position embedding), cross-attention to the
text tokens (I2V: also to CLIP image tokens through their own k/v projections), a GELU-tanh feed-forward
network, and a modulated linear head followed by unpatchify.

Parameter names equal the native Wan2.1 checkpoint layout (``blocks.0.self_attn.q.weight`` ...), so native
files load without renaming; :mod:`rcm_plugins.wan.checkpoint` maps to and from the diffusers layout.

Timesteps are one per sample, or one per latent frame (Wan2.2 TI2V tells the tokens of a clean first frame
timestep 0): the modulation is then computed per frame and applied to each frame's tokens, which is what
diffusers' per-token timesteps amount to.

Numerics follow the reference implementations: the time path (sinusoid, MLP, modulation), the layer norms
and the gated residual additions run in at least float32 even when the network runs in bf16; the RoPE
tables are built in float64. Everything is plain differentiable torch ops (RoPE uses real arithmetic, no
complex tensors), so ``torch.autograd.forward_ad`` dual tensors and ``torch.func.jvp`` both work, provided
the attention backend does.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from rcm_plugins.common.export import ExportableNetwork, Layouts
from rcm_plugins.common.fused_ops import fused_kernels, gated_residual, modulated_layer_norm, rms_norm_rope
from rcm_plugins.common.inputs import check_latents, check_tokens
from rcm_plugins.common.layers import (
    Linear,
    RMSNorm,
    UpcastLayerNorm,
    compute_dtype,
    heads_first,
    linear,
    merge_heads,
    sinusoidal_embedding,
)
from rcm_plugins.common.layers import linear_in as _linear
from rcm_plugins.common.rope import rope_tables
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

#: Wan's pipelines pad T5 text embeddings to this many tokens (the network itself takes any length).
TEXT_TOKENS = 512
#: Wan's network time is this many units per unit of rectified-flow time s ∈ [0, 1] (timestep = 1000·s).
TIMESTEP_SCALE = 1000.0


@attrs.frozen
class WanArch:
    """Architecture hyper-parameters of a Wan2.1 transformer (native names where they exist)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = attrs.field(default=(1, 2, 2), converter=tuple)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    #: Width of the CLIP image tokens for I2V; None for text-to-video.
    image_dim: int | None = None

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        elif (self.dim // self.num_heads) % 2 or self.dim // self.num_heads < 6:
            problems.append(f"head dim {self.dim // self.num_heads} must be even and >= 6 (3-D RoPE)")
        if self.freq_dim % 2:
            problems.append(f"freq_dim {self.freq_dim} must be even")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            problems.append(f"patch_size {self.patch_size} must be three positive ints")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def i2v(self) -> bool:
        return self.image_dim is not None


Attn = Any  # an attention backend object: attn(q, k, v, *, scale=None) with (B, H, S, D) inputs


def _norm_rope(norm: RMSNorm, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """Wan's q/k RMS norm across all heads of (B, S, H, D), then RoPE on adjacent channel pairs."""
    return rms_norm_rope(x, norm.weight, rope, norm.eps, per_head=False, interleaved=True)


class _Projections(nn.Module):
    """The q, k, v and output projections and the q/k RMS norms both of Wan's attentions have (native names)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


def _attend(attn: Attn, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q, k, v)``; for a batch of no samples, an empty output that keeps q, k and v in the graph.

    A Wan2.2 expert runs on no samples when every sample of a rank's batch belongs to the other expert
    and ranks must still issue the same collectives (see :mod:`rcm_plugins.wan.experts`); the backends need
    not handle empty batches, and every parameter still gets a (zero) gradient.
    """
    if q.shape[0] == 0:
        return q + (k.sum() + v.sum()) * 0
    return attn(q, k, v)


class SelfAttention(_Projections):
    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], attn: Attn) -> Tensor:
        heads = (self.num_heads, -1)
        q = _norm_rope(self.norm_q, self.q(x).unflatten(-1, heads), rope)
        k = _norm_rope(self.norm_k, self.k(x).unflatten(-1, heads), rope)
        v = self.v(x).unflatten(-1, heads)
        return self.o(merge_heads(_attend(attn, heads_first(q), heads_first(k), heads_first(v))))


class CrossAttention(_Projections):
    """Attention from video tokens to text tokens; with ``image=True`` also to CLIP image tokens.

    The two attentions share the queries and are summed before the output projection.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, *, image: bool) -> None:
        super().__init__(dim, num_heads, eps)
        if image:
            self.k_img = Linear(dim, dim)
            self.v_img = Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x: Tensor, context: Tensor, context_img: Tensor | None, attn: Attn) -> Tensor:
        heads = (self.num_heads, -1)
        q = heads_first(_norm_rope(self.norm_q, self.q(x).unflatten(-1, heads), None))
        k = heads_first(_norm_rope(self.norm_k, self.k(context).unflatten(-1, heads), None))
        v = heads_first(self.v(context).unflatten(-1, heads))
        out = _attend(attn, q, k, v)
        if context_img is not None:
            k_img = heads_first(_norm_rope(self.norm_k_img, self.k_img(context_img).unflatten(-1, heads), None))
            v_img = heads_first(self.v_img(context_img).unflatten(-1, heads))
            out = out + _attend(attn, q, k_img, v_img)
        return self.o(merge_heads(out))


class WanBlock(nn.Module):
    def __init__(self, arch: WanArch) -> None:
        super().__init__()
        dim = arch.dim
        self.norm1 = UpcastLayerNorm(dim, eps=arch.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, arch.num_heads, arch.eps)
        # Native numbering: norm3 is the (optional, affine) norm before cross-attention, norm2 the FFN one.
        self.norm3: nn.Module = (
            UpcastLayerNorm(dim, eps=arch.eps, elementwise_affine=True) if arch.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = CrossAttention(dim, arch.num_heads, arch.eps, image=arch.i2v)
        self.norm2 = UpcastLayerNorm(dim, eps=arch.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(Linear(dim, arch.ffn_dim), nn.GELU(approximate="tanh"), Linear(arch.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        rope: tuple[Tensor, Tensor],
        context: Tensor,
        context_img: Tensor | None,
        attn: Attn,
        self_attn: Attn | None = None,
    ) -> Tensor:
        # e: (B, G, 6, dim) in the time dtype (>= float32): shift, scale, gate for attention, then for the
        # FFN, for each of G groups of consecutive tokens (G = 1, or one group per latent frame).
        # self_attn: the backend for self-attention when it differs from attn (context parallel).
        td = e.dtype
        groups = e.shape[1]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.to(td) + e).unbind(2)
        h = modulated_layer_norm(x, 1 + scale1, shift1, self.norm1.eps, groups)
        x = gated_residual(x, self.self_attn(h, rope, self_attn or attn), gate1, groups)
        if isinstance(self.norm3, nn.LayerNorm):
            x = x + self.cross_attn(
                modulated_layer_norm(x, self.norm3.weight, self.norm3.bias, self.norm3.eps), context, context_img, attn
            )
        else:
            x = x + self.cross_attn(x, context, context_img, attn)
        h = modulated_layer_norm(x, 1 + scale2, shift2, self.norm2.eps, groups)
        return gated_residual(x, self.ffn(h), gate2, groups)


class Head(nn.Module):
    def __init__(self, arch: WanArch) -> None:
        super().__init__()
        self.norm = UpcastLayerNorm(arch.dim, eps=arch.eps, elementwise_affine=False)
        self.head = Linear(arch.dim, arch.out_channels * math.prod(arch.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, arch.dim) / arch.dim**0.5)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # temb: (B, G, dim), one vector per group of consecutive tokens as in WanBlock.
        td = temb.dtype
        shift, scale = (self.modulation.to(td) + temb.unsqueeze(2)).unbind(2)
        return self.head(modulated_layer_norm(x, 1 + scale, shift, self.norm.eps, temb.shape[1]))


class ImageProjection(nn.Module):
    """CLIP image tokens → model width: LayerNorm, Linear, GELU, Linear, LayerNorm (native ``img_emb.proj``)."""

    def __init__(self, image_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            UpcastLayerNorm(image_dim),
            Linear(image_dim, image_dim),
            nn.GELU(),
            Linear(image_dim, dim),
            UpcastLayerNorm(dim),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.proj(image)


class WanNetwork(ExportableNetwork, nn.Module):
    """Wan transformer: ``net(x, timestep, text, image=None, image_latent=None)``.

    Args:
        arch: the architecture.
        attention: the attention backend object (from the config's ``attention`` component); every
            attention of the network calls it with (B, H, S, D) views.
        activation_checkpointing: recompute each block in the backward pass (training with grad only).
        fused_ops: the Triton kernels of :mod:`rcm_plugins.common.fused_ops` on CUDA (False: their plain
            torch references, so that forward-mode AD runs eagerly through every op; a comparison switch).

    ``sequence_parallel`` (None, or an object of ``rcm_registry.protocols.SequenceParallel`` set by the
    ``parallel`` strategy): the token sequence is split over a context-parallel group after the patch
    embedding, self-attention runs through its all-to-all, and the head's output is gathered.
    """

    def __init__(
        self, arch: WanArch, attention: Attn, *, activation_checkpointing: bool = False, fused_ops: bool = True
    ) -> None:
        super().__init__()
        self.arch = arch
        self.attention = attention
        self.activation_checkpointing = activation_checkpointing
        self.fused_ops = fused_ops
        self.sequence_parallel: Any = None
        dim = arch.dim
        self.patch_embedding = nn.Conv3d(arch.in_channels, dim, kernel_size=arch.patch_size, stride=arch.patch_size)
        self.text_embedding = nn.Sequential(Linear(arch.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(arch.freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(arch) for _ in range(arch.num_layers))
        self.head = Head(arch)
        if arch.image_dim is not None:
            self.img_emb = ImageProjection(arch.image_dim, dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def time_embedding_of(self, timestep: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(temb (B, dim), six-way modulation (B, 6, dim)) in ``dtype`` (at least float32); for per-frame
        timesteps (B, F), (B, F, dim) and (B, F, 6, dim)."""
        sinusoid = sinusoidal_embedding(timestep.reshape(-1), self.arch.freq_dim, dtype)
        h = F.silu(_linear(sinusoid, self.time_embedding[0], dtype))
        temb = _linear(h, self.time_embedding[2], dtype)
        e = _linear(F.silu(temb), self.time_projection[1], dtype)
        dim = self.arch.dim
        return temb.reshape(*timestep.shape, dim), e.reshape(*timestep.shape, 6, dim)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) → tokens (B, S, dim): the strided Conv3d, as a matmul over flattened patches."""
        b, c, t, h, w = x.shape
        pt, ph, pw = self.arch.patch_size
        patches = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)
        weight = self.patch_embedding.weight
        return linear(patches, weight.reshape(weight.shape[0], -1), self.patch_embedding.bias)

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, S, pt·ph·pw·C) → (B, C, T, H, W); the head's features are patch-major, channel-minor."""
        b = tokens.shape[0]
        pt, ph, pw = self.arch.patch_size
        f, h, w = grid
        c = self.arch.out_channels  # named, not inferred: an empty batch has no size to infer it from
        out = tokens.reshape(b, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, c, f * pt, h * ph, w * pw)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        text: Tensor,
        image: Tensor | None = None,
        image_latent: Tensor | None = None,
    ) -> Tensor:
        """Predict the flow velocity for video latents.

        Args:
            x: (B, C, T, H, W) latents; H and W divisible by the patch size.
            timestep: (B,) in the network's units (0–1000), or (B, T / patch_t), one per latent frame.
            text: (B, L, text_dim) text-encoder tokens (Wan's pipelines zero-pad them to 512).
            image: I2V only: (B, N, image_dim) CLIP image tokens.
            image_latent: I2V only: (B, in_channels − C, T, H, W) conditioning latents (mask and
                encoded first frame), concatenated to x along channels. Omit it to pass them
                already concatenated in x.

        Returns:
            (B, out_channels, T, H, W), in x's dtype; shaped like x when the conditioning latents are
            passed separately.
        """
        if self.fused_ops:
            return self._predict(x, timestep, text, image, image_latent)
        with fused_kernels(False):
            return self._predict(x, timestep, text, image, image_latent)

    def _predict(
        self, x: Tensor, timestep: Tensor, text: Tensor, image: Tensor | None, image_latent: Tensor | None
    ) -> Tensor:
        arch = self.arch
        if image_latent is not None:
            inputs = torch.cat((x, image_latent.to(x.dtype)), dim=1)
        else:
            inputs = x
        self._check_inputs(inputs, timestep, text, image)
        dtype = self.dtype
        td = compute_dtype(dtype)
        grid = tuple(n // p for n, p in zip(inputs.shape[2:], arch.patch_size, strict=True))

        tokens = self.patchify(inputs.to(dtype))
        temb, e = self.time_embedding_of(timestep, td)
        if timestep.ndim == 1:  # one group of tokens per sample
            temb, e = temb.unsqueeze(1), e.unsqueeze(1)
        context = self.text_embedding(text.to(dtype))
        context_img = self.img_emb(image.to(dtype)) if image is not None else None
        rope = rope_tables(grid, arch.head_dim, device=tokens.device, dtype=td)  # type: ignore[arg-type]
        sp = self.sequence_parallel
        self_attn = None
        if sp is not None:  # every rank keeps its chunk of the tokens (and of their RoPE angles)
            if timestep.ndim == 2:
                raise ValueError("per-frame timesteps do not split over context-parallel ranks: use context_parallel 1")
            tokens = sp.split(tokens, 1)
            rope = (sp.split(rope[0], 0), sp.split(rope[1], 0))
            self_attn = sp.attention(self.attention)

        use_checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                tokens = checkpoint(
                    block, tokens, e, rope, context, context_img, self.attention, self_attn, use_reentrant=False
                )
            else:
                tokens = block(tokens, e, rope, context, context_img, self.attention, self_attn)
        out = self.head(tokens, temb)
        if sp is not None:  # gathered after the head: its per-token output is narrower than the tokens
            out = sp.gather(out, 1)
        return self.unpatchify(out, grid).to(x.dtype)  # type: ignore[arg-type]

    @classmethod
    def checkpoint_layouts(cls) -> Layouts:
        """The Wan2.1 layouts that ``export`` (from :class:`ExportableNetwork`) writes."""
        from rcm_plugins.wan.checkpoint import LAYOUTS  # the checkpoint module imports this one

        return LAYOUTS

    def _check_inputs(self, x: Tensor, timestep: Tensor, text: Tensor, image: Tensor | None) -> None:
        arch = self.arch
        # More input than output channels: conditioning latents ride along (Wan2.1 I2V, Wan2.2 I2V-A14B).
        hint = " (pass the conditioning latents as image_latent=...)" if arch.in_channels > arch.out_channels else ""
        check_latents(x, arch.in_channels, arch.patch_size, hint=hint)
        b, frames = x.shape[0], x.shape[2] // arch.patch_size[0]
        if timestep.shape not in ((b,), (b, frames)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {frames}), got {tuple(timestep.shape)}")
        check_tokens("text", text, x.shape[0], arch.text_dim)
        if arch.i2v:
            if image is None:
                raise ValueError("the I2V network needs image= (CLIP image tokens)")
            check_tokens("image", image, x.shape[0], arch.image_dim, length="N")
        elif image is not None:
            raise ValueError("this network takes no image= (CLIP image tokens are wan2.1-i2v's)")

    def extra_repr(self) -> str:
        a = self.arch
        return (
            f"dim={a.dim}, heads={a.num_heads}, layers={a.num_layers}, ffn={a.ffn_dim}, "
            f"in={a.in_channels}, out={a.out_channels}, i2v={a.i2v}, attention={self.attention!r}"
        )
