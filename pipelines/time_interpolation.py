"""Frames at one time step -> frames at another: how a 5-minute network forecasts a 2-, 6-, 10- or
15-minute product.

- ``linear``: a per-pixel weighted mean of the two neighbouring frames. A cell that moves shows up
  twice, faded, at its old and at its new place (ghosting), and a network trained on real 5-minute
  frames has never seen such a history.
- ``motion`` (the default): motion-compensated interpolation. Both neighbours are carried along the
  Lucas-Kanade motion of the frames to the wanted time (semi-Lagrangian, constant motion over the
  step), then blended; each cell appears once, where it should be. It is the advection correction
  radar hydrologists apply before summing frames into accumulations (pysteps' gallery has an
  example of it): the earlier frame carried forward and the later one carried back, weighted by time.

Both take ``[B, T, H, W]`` mm/h with NaN as nodata and return float32 at the times asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import map_coordinates

from pipelines.motion import MOTION_HISTORY, motion_field

TIME_INTERPOLATIONS = ("motion", "linear")


def _neighbours(frames: np.ndarray, step: float, times: np.ndarray, origin: int | None) -> list[tuple[int, float]]:
    """(index of the earlier neighbour, fraction of the step past it) for each time (minutes, frame
    ``origin``, default the last, at 0)."""
    origin = frames.shape[1] - 1 if origin is None else origin
    pairs = []
    for t in np.asarray(times, dtype=np.float64):
        position = origin + t / step
        if position < -1e-6 or position > frames.shape[1] - 1 + 1e-6:
            raise ValueError(f"time {t:g} min lies outside the {frames.shape[1]} frames given")
        i = min(int(np.floor(position + 1e-9)), frames.shape[1] - 1)
        w = position - i
        pairs.append((i, 0.0 if w < 1e-6 else float(w)))
    return pairs


def interpolate_linear(frames: np.ndarray, step: float, times: np.ndarray, origin: int | None = None,
                       velocity: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel linear interpolation; NaN on either side of a pair stays NaN (``velocity`` unused)."""
    out = [frames[:, i] if w == 0 else (1 - w) * frames[:, i] + w * frames[:, i + 1]
           for i, w in _neighbours(frames, step, times, origin)]
    return np.stack(out, axis=1).astype(np.float32)


def motion_per_minute(frames: np.ndarray, step: float) -> np.ndarray:
    """Lucas-Kanade motion [B, 2, H, W] in pixels per minute from the last frames of each sample."""
    if frames.shape[1] < 2:
        raise ValueError("motion-compensated interpolation needs at least 2 frames")
    return np.stack([motion_field(np.asarray(sample, dtype=np.float64), MOTION_HISTORY) / step
                     for sample in frames]).astype(np.float32)


def _carry(frame: np.ndarray, velocity: np.ndarray, minutes: float) -> np.ndarray:
    """``frame`` carried ``minutes`` along ``velocity`` (px/min; negative: backwards): the value at x
    is the frame's at x - minutes * v(x), bilinear; NaN where that point is nodata or off the grid."""
    ny, nx = frame.shape
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
    coords = np.stack([yy - minutes * velocity[1], xx - minutes * velocity[0]])
    valid = np.isfinite(frame)
    values = map_coordinates(np.where(valid, frame, 0.0), coords, order=1, mode="constant", cval=0.0)
    # nodata where the nearest source pixel is nodata or the point lies outside the grid
    inside = map_coordinates(valid.astype(np.float32), coords, order=0, mode="constant", cval=0.0) > 0.5
    return np.where(inside, values, np.nan).astype(np.float32)


def interpolate_along_motion(frames: np.ndarray, step: float, times: np.ndarray, origin: int | None = None,
                             velocity: np.ndarray | None = None) -> np.ndarray:
    """Motion-compensated interpolation. ``velocity``: [B, 2, H, W] px/min (x then y, pysteps'
    order); estimated from ``frames`` when not given. At a fraction w of the step past frame i, the
    result is (1 - w) * frame i carried w steps forward + w * frame i+1 carried 1 - w steps back;
    where only one of the two is observed, that one; where neither trajectory stays on the grid,
    the linear blend of the pixel itself."""
    pairs = _neighbours(frames, step, times, origin)
    if all(w == 0 for _, w in pairs):
        return np.stack([frames[:, i] for i, _ in pairs], axis=1).astype(np.float32)
    velocity = motion_per_minute(frames, step) if velocity is None else velocity
    out = np.empty((frames.shape[0], len(pairs), *frames.shape[2:]), dtype=np.float32)
    for b in range(frames.shape[0]):
        for k, (i, w) in enumerate(pairs):
            if w == 0:
                out[b, k] = frames[b, i]
                continue
            ahead = _carry(frames[b, i], velocity[b], w * step)
            behind = _carry(frames[b, i + 1], velocity[b], -(1 - w) * step)
            weights = np.stack([np.where(np.isfinite(ahead), 1 - w, 0.0), np.where(np.isfinite(behind), w, 0.0)])
            total = weights.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                blend = (weights[0] * np.nan_to_num(ahead) + weights[1] * np.nan_to_num(behind)) / total
            # both trajectories leave the grid (a corner): the two frames' own pixels, as linear does
            out[b, k] = np.where(total > 0, blend, (1 - w) * frames[b, i] + w * frames[b, i + 1])
    return out


METHODS: dict[str, Callable[..., np.ndarray]] = {"motion": interpolate_along_motion, "linear": interpolate_linear}


def interpolate_in_time(frames: np.ndarray, step: float, times: np.ndarray, origin: int | None = None,
                        method: str = "motion", velocity: np.ndarray | None = None) -> np.ndarray:
    """[B, T, H, W] frames ``step`` minutes apart, at ``times`` (minutes; frame ``origin``, default
    the last, at 0), by ``method`` (one of TIME_INTERPOLATIONS)."""
    if method not in METHODS:
        raise ValueError(f"time interpolation must be one of {', '.join(TIME_INTERPOLATIONS)}, got {method!r}")
    return METHODS[method](frames, step, times, origin, velocity)
