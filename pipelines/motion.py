"""Motion and extrapolation with pysteps, in mm/h: the optical-flow and S-PROG cores shared by the
baselines, the hybrid networks and the extrapolation caches they train on."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from pipelines.pysteps_import import quiet, quiet_import

#: mm/h below which a pixel is "no rain" for the motion field and S-PROG (dBR zero value below)
RAIN_THRESHOLD_MM_H = 0.1
#: frames the motion field is estimated from: every optical-flow user (baselines, hybrids, the cache)
MOTION_HISTORY = 3
DBR_ZERO = -15.0


def to_dbr(rain: np.ndarray, threshold: float = RAIN_THRESHOLD_MM_H) -> np.ndarray:
    """mm/h -> dBR with pysteps' zero-value convention (no rain and nodata -> DBR_ZERO)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        dbr = 10.0 * np.log10(np.where(rain >= threshold, rain, 1.0))
    return np.where(np.nan_to_num(rain, nan=0.0) >= threshold, dbr, DBR_ZERO)


class _Memo:
    """The last few results by content: ``optical_flow``, its smoothed variant, S-PROG and every
    hybrid network are often asked about the very same frames (``nowcast evaluate`` runs them side
    by side), and Lucas-Kanade on a full 1 km grid costs seconds."""

    def __init__(self, size: int = 4):
        self.size, self.items = size, OrderedDict()

    @staticmethod
    def key(array: np.ndarray, *extra: object) -> tuple:
        array = np.ascontiguousarray(array)
        return (hashlib.blake2b(array.view(np.uint8), digest_size=16).hexdigest(), array.shape, str(array.dtype), extra)

    def get(self, key: tuple) -> np.ndarray | None:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key].copy()
        return None

    def put(self, key: tuple, value: np.ndarray) -> np.ndarray:
        self.items[key] = value.copy()
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_motion_memo, _extrapolation_memo, _sprog_memo = _Memo(), _Memo(), _Memo()


def motion_field(rain: np.ndarray, history: int = MOTION_HISTORY) -> np.ndarray:
    """Lucas-Kanade velocity [2, H, W] (pixels per step) from the last ``history`` frames (mm/h)."""
    frames = rain[-history:]
    key = _Memo.key(frames, history)
    cached = _motion_memo.get(key)
    if cached is not None:
        return cached
    motion = quiet_import("pysteps.motion")
    return _motion_memo.put(key, motion.get_method("LK")(to_dbr(frames), verbose=False))


def extrapolate(rain: np.ndarray, t_out: int, history: int = MOTION_HISTORY) -> np.ndarray:
    """rain [T, H, W] mm/h -> [t_out, H, W] mm/h by LK + semi-Lagrangian advection.

    NaN where the advected point comes from outside the grid or from nodata: nobody observed it.
    """
    key = _Memo.key(rain[-history:], t_out, history)
    cached = _extrapolation_memo.get(key)
    if cached is not None:
        return cached
    nowcasts = quiet_import("pysteps.nowcasts")
    velocity = motion_field(rain, history)
    with quiet():
        forecast = nowcasts.get_method("extrapolation")(rain[-1], velocity, t_out)
    return _extrapolation_memo.put(key, np.asarray(forecast, dtype=np.float64))


def sprog(rain: np.ndarray, t_out: int, history: int = MOTION_HISTORY) -> np.ndarray:
    """pysteps S-PROG on the last 3 frames (AR(2)), 8 cascade levels; mm/h in and out, NaN = nodata."""
    key = _Memo.key(rain[-max(3, history):], t_out, history)
    cached = _sprog_memo.get(key)
    if cached is not None:
        return cached
    nowcasts = quiet_import("pysteps.nowcasts")
    velocity = motion_field(rain, history)
    zero = 10.0 * np.log10(RAIN_THRESHOLD_MM_H)
    with quiet():
        forecast = nowcasts.get_method("sprog")(
            to_dbr(rain[-3:]), velocity, t_out, n_cascade_levels=8, precip_thr=zero, ar_order=2, measure_time=False,
        )
    with np.errstate(invalid="ignore"):
        rain_out = np.where(forecast >= zero, 10.0 ** (forecast / 10.0), 0.0)
    return _sprog_memo.put(key, np.where(np.isfinite(forecast), rain_out, np.nan))
