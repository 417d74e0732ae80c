"""How well a track follows constant-velocity motion with elastic bounces: a least-squares fit per axis.

Along one axis the digit's box moves as ``corner(t) = tri(q0 + v·t)``, the triangle wave folding the
unfolded path into [0, room] (see ``moving_digits_dataset.bounce``); its intensity centroid sits a fixed
offset ``a`` from the corner, so a centroid track is ``a + tri(q0 + v·t)`` with three unknowns. The fit:
for every fold pattern (which segment of the triangle each frame is on) met on a grid over (v, q0) the
model is linear in (a, q0, v) and solved exactly by least squares; the best of them is the fit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def triangle(q: Tensor, room: float) -> Tensor:
    """q folded into [0, room] by reflection at both ends."""
    if room <= 0:
        return torch.zeros_like(q)
    return room - ((q % (2 * room)) - room).abs()


def _sse(track: Tensor, path: Tensor) -> tuple[Tensor, Tensor]:
    """(best offset a, sum of squared residuals) of ``track ≈ a + path`` along the last axis."""
    a = (track - path).mean(dim=-1)
    return a, (track - path - a[..., None]).square().sum(dim=-1)


def fold_patterns(frames: int, room: float, max_speed: float, speed_points: int, phase_points: int) -> Tensor:
    """The distinct folds (P, 2, T) — sign and shift with tri(u_t) = sign_t·u_t + shift_t — met on a (v, q0) grid."""
    t = torch.arange(frames, dtype=torch.float64)
    speeds = torch.linspace(-max_speed, max_speed, speed_points, dtype=torch.float64)
    phases = (torch.arange(phase_points, dtype=torch.float64) + 0.5) * (2 * room / phase_points)
    u = phases.repeat(speed_points)[:, None] + speeds.repeat_interleave(phase_points)[:, None] * t
    return torch.unique(torch.stack(_folds(u, room), dim=1), dim=0)


def _folds(u: Tensor, room: float) -> tuple[Tensor, Tensor]:
    period = 2 * room
    n = torch.floor(u / period)
    rising = (u - n * period) <= room
    return torch.where(rising, 1.0, -1.0).double(), torch.where(rising, -period * n, period * (n + 1))


def _solve(tracks: Tensor, sign: Tensor, shift: Tensor, room: float, t: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares (q0, v) of ``tracks ≈ a + sign·(q0 + v·t) + shift``, folds (…, T) held fixed.

    Without a fold only a + q0 is determined: the path is then centred in its segment, so it stays unfolded.
    """
    design = torch.stack((torch.ones_like(sign), sign, sign * t), dim=-1)  # (..., T, 3)
    solution = (torch.linalg.pinv(design) @ (tracks - shift)[..., None])[..., 0]
    q0, v = solution[..., 1], solution[..., 2]
    straight = (sign == sign[..., :1]).all(dim=-1)
    u = q0[..., None] + v[..., None] * t
    middle = (u.amin(dim=-1) + u.amax(dim=-1)) / 2
    q0 = torch.where(straight, q0 + torch.floor(middle / room) * room + room / 2 - middle, q0)
    return q0, v


def fit_bounce_tracks(
    tracks: Tensor, room: float, max_speed: float, *, speed_points: int = 97, phase_points: int = 64, chunk: int = 32
) -> Tensor:
    """Best-fit tracks (M, T) ``a + tri(q0 + v·t)`` to tracks (M, T) (|v| ≤ max_speed on the grid), float64.

    Every fold pattern the grid meets is solved exactly by least squares and the best is kept; then a few
    rounds re-solve with the folds of the current best, which settles fits between grid points.
    """
    tracks = tracks.double()
    m, frames = tracks.shape
    t = torch.arange(frames, dtype=torch.float64)
    if room <= 0:
        return tracks.mean(dim=1, keepdim=True).expand(m, frames).clone()
    patterns = fold_patterns(frames, room, max_speed, speed_points, phase_points)
    sign, shift = patterns[:, 0], patterns[:, 1]
    design = torch.stack((torch.ones_like(sign), sign, sign * t), dim=-1)
    pinv = torch.linalg.pinv(design)  # (P, 3, T), shared by every track
    straight = (sign == sign[:, :1]).all(dim=-1)
    best_q = torch.empty(m, dtype=torch.float64)
    best_v = torch.empty(m, dtype=torch.float64)
    for lo in range(0, m, chunk):
        part = tracks[lo : lo + chunk]
        solution = torch.einsum("pkt,cpt->cpk", pinv, part[:, None, :] - shift[None])
        q0, v = solution[..., 1], solution[..., 2]
        u = q0[..., None] + v[..., None] * t
        middle = (u.amin(dim=-1) + u.amax(dim=-1)) / 2
        q0 = torch.where(straight, q0 + torch.floor(middle / room) * room + room / 2 - middle, q0)
        _, sse = _sse(part[:, None, :], triangle(q0[..., None] + v[..., None] * t, room))
        pick = sse.argmin(dim=1)
        rows = torch.arange(part.shape[0])
        best_q[lo : lo + chunk], best_v[lo : lo + chunk] = q0[rows, pick], v[rows, pick]
    return _refine(tracks, best_q, best_v, room, t)


def _refine(tracks: Tensor, q0: Tensor, v: Tensor, room: float, t: Tensor, rounds: int = 3) -> Tensor:
    path = triangle(q0[:, None] + v[:, None] * t, room)
    a, best = _sse(tracks, path)
    fitted = a[:, None] + path
    for _ in range(rounds):
        sign, shift = _folds(q0[:, None] + v[:, None] * t, room)
        q_new, v_new = _solve(tracks, sign, shift, room, t)
        path_new = triangle(q_new[:, None] + v_new[:, None] * t, room)
        a_new, sse = _sse(tracks, path_new)
        better = sse < best
        q0, v = torch.where(better, q_new, q0), torch.where(better, v_new, v)
        fitted = torch.where(better[:, None], a_new[:, None] + path_new, fitted)
        best = torch.minimum(sse, best)
    return fitted


def motion_errors(centroid_tracks: Tensor, room: float, max_speed: float) -> Tensor:
    """Per clip: RMS distance in pixels (over frames) of its centroid track (N, T, 2) from the best fit."""
    n, frames, _ = centroid_tracks.shape
    per_axis = centroid_tracks.double().permute(0, 2, 1).reshape(n * 2, frames)
    fitted = fit_bounce_tracks(per_axis, room, max_speed)
    squared = (per_axis - fitted).square().reshape(n, 2, frames).sum(dim=1)
    return squared.mean(dim=1).sqrt()
