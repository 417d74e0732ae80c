"""3-D rotary position embeddings over (time, height, width) token grids, in real arithmetic.

Both Wan2.1 and Cosmos-Predict2 split a head's rotation pairs the same way: ``head_dim // 6`` pairs each
for height and width, the rest for time, each axis with its own frequency ladder
``theta_axis^(−2j / axis_dim)`` (axis_dim = 2·pairs). They differ in which channels form a pair:

* Wan: adjacent channels (2i, 2i+1) — :func:`apply_rope_interleaved`;
* Cosmos-Predict2 (and Transformer Engine's ``apply_rotary_pos_emb``): channel i with channel i + D/2
  ("rotate half") — :func:`apply_rope_halves`.

Cosmos-Predict2 also stretches each axis' base (NTK-aware extrapolation:
``theta_axis = 10000·ratio^(axis_dim/(axis_dim − 2))``) and rescales temporal positions by
``base_fps / fps`` for videos; :func:`rope_tables` takes both.

Angles are formed in float64 (positions reach the hundreds, where float32 angles lose digits) and only
then cast; no complex tensors, so forward-mode AD passes through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to (time, height, width)."""
    pairs = head_dim // 2
    hw = head_dim // 6
    return pairs - 2 * hw, hw, hw


def ntk_theta(ratio: float, pairs: int, base: float = 10000.0) -> float:
    """Base of one axis stretched for extrapolation by ``ratio`` (Cosmos' NTK-aware scaling)."""
    axis_dim = 2 * pairs
    return base * ratio ** (axis_dim / (axis_dim - 2)) if ratio != 1.0 else base


def rope_angles(
    grid: Sequence[int],
    head_dim: int,
    *,
    device: torch.device | str | None = None,
    thetas: Sequence[float] = (10000.0, 10000.0, 10000.0),
    time_scale: float = 1.0,
) -> Tensor:
    """Rotary angles (S, head_dim // 2), float64, for S = T·H·W tokens in (t, h, w) order.

    Per token: the time pairs, then height, then width; ``time_scale`` multiplies temporal positions.
    """
    angles = []
    for axis, (n, p, theta) in enumerate(zip(grid, axis_pairs(head_dim), thetas, strict=True)):
        exponents = torch.arange(0, 2 * p, 2, dtype=torch.float64, device=device) / (2 * p)
        inv_freq = 1.0 / (theta**exponents)
        positions = torch.arange(n, dtype=torch.float64, device=device)
        if axis == 0 and time_scale != 1.0:
            positions = positions * time_scale
        a = torch.outer(positions, inv_freq)
        shape = [1, 1, 1, p]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, p))
    return torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)


def rope_tables(
    grid: Sequence[int],
    head_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype,
    theta: float = 10000.0,
    thetas: Sequence[float] | None = None,
    time_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """cos and sin of :func:`rope_angles`, each (S, 1, head_dim // 2) in ``dtype`` (broadcast over heads)."""
    full = rope_angles(grid, head_dim, device=device, thetas=thetas or (theta,) * 3, time_scale=time_scale)
    full = full.unsqueeze(1)
    return full.cos().to(dtype), full.sin().to(dtype)


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x (B, S, H, D) by the tabled angles (Wan)."""
    cd = cos.dtype
    pairs = x.to(cd).unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def apply_rope_halves(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, S, H, D) by the tabled angles (Cosmos, "rotate half")."""
    cd = cos.dtype
    x1, x2 = x.to(cd).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
