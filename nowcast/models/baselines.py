"""Operational baselines behind the model interface.

- ``persistence``: the last frame, unchanged.
- ``optical_flow``: pysteps Lucas-Kanade motion and semi-Lagrangian extrapolation.
- ``optical_flow_smooth``: the same, blurred by a Gaussian that widens with lead time
  (sigma = 0.5 pixel per step). CSI at low thresholds rewards smoothing, so a network has to
  beat this, not only the sharp extrapolation, before it has learned anything about rain.
- ``sprog``: pysteps S-PROG (Seed 2003): 8-level cascade, AR(2) per level, pysteps defaults.

The motion-based ones work in mm/h, so they need the normaliser the inputs were made with.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from nowcast.models.base import Forecaster
from pipelines.motion import MOTION_HISTORY, extrapolate, sprog
from pipelines.normalization import RainNormalizer


def smooth_by_lead(forecast: np.ndarray, sigma_per_step: float = 0.5) -> np.ndarray:
    """Blur lead k (1-based) with sigma = k * sigma_per_step pixels, ignoring NaN (normalised convolution)."""
    out = np.empty_like(forecast, dtype=np.float64)
    for k, frame in enumerate(forecast, start=1):
        valid = np.isfinite(frame)
        sigma = sigma_per_step * k
        num = gaussian_filter(np.where(valid, frame, 0.0), sigma, mode="constant")
        den = gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k - 1] = np.where(valid & (den > 1e-6), num / den, np.nan)
    return out


class Persistence(Forecaster):
    """The last observed frame, unchanged, for every lead time."""

    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **_: object) -> Tensor:
        return inputs[:, -1:].expand(-1, t_out, -1, -1, -1).clone()


class MotionBaseline(Forecaster):
    """A pysteps method run per sample and channel in mm/h; nodata in its output becomes dry."""

    min_input_steps = MOTION_HISTORY
    #: True when the method fits a model of time at the frames' step (S-PROG's AR(2)): it must then
    #: run on a product's own frames, not on history resampled to another step. Advection alone does
    #: not care (bench/resampled_baselines.py measures both)
    fitted_in_time = False

    def __init__(self, normalization: dict | None = None, history: int = MOTION_HISTORY):
        super().__init__()
        self.normalizer = RainNormalizer.from_dict(normalization) if normalization else RainNormalizer()
        self.history = history

    def forecast_mm_h(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        raise NotImplementedError

    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **_: object) -> Tensor:
        if inputs.shape[1] < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 input frames to estimate motion")
        rain = self.normalizer.inverse(inputs.detach().double()).cpu().numpy()
        out = np.empty((rain.shape[0], t_out, *rain.shape[2:]))
        for b in range(rain.shape[0]):
            for ch in range(rain.shape[2]):
                out[b, :, ch] = np.nan_to_num(self.forecast_mm_h(rain[b, :, ch], t_out), nan=0.0)
        return self.normalizer.forward(torch.from_numpy(out)).to(inputs)


class OpticalFlow(MotionBaseline):
    """pysteps: Lucas-Kanade motion on the last frames (in dBR) and semi-Lagrangian advection."""

    def forecast_mm_h(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        return extrapolate(rain, t_out, self.history)


class OpticalFlowSmooth(MotionBaseline):
    """Optical flow blurred by sigma = ``sigma_per_step`` pixels per lead step."""

    def __init__(self, normalization: dict | None = None, history: int = MOTION_HISTORY, sigma_per_step: float = 0.5):
        super().__init__(normalization, history)
        self.sigma_per_step = sigma_per_step

    def forecast_mm_h(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        return smooth_by_lead(extrapolate(rain, t_out, self.history), self.sigma_per_step)


class SProg(MotionBaseline):
    """pysteps S-PROG: Lucas-Kanade motion, 8 cascade levels, AR(2)."""

    fitted_in_time = True

    def forecast_mm_h(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        return sprog(rain, t_out, self.history)
