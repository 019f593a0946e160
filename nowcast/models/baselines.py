"""Operational baselines behind the model interface: persistence and optical-flow extrapolation."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor

from nowcast.models.base import Forecaster
from pipelines.normalization import RainNormalizer


class Persistence(Forecaster):
    """The last observed frame, unchanged, for every lead time."""

    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **_: float) -> Tensor:
        return inputs[:, -1:].expand(-1, t_out, -1, -1, -1).clone()


class OpticalFlow(Forecaster):
    """pysteps: Lucas-Kanade motion on the last frames (in dBR) and semi-Lagrangian advection.

    Works in mm/h, so it needs the normaliser the inputs were made with.
    """

    min_input_steps = 3

    def __init__(self, normalization: dict | None = None, history: int = 3, rain_threshold: float = 0.1):
        super().__init__()
        self.normalizer = RainNormalizer.from_dict(normalization) if normalization else RainNormalizer()
        self.history, self.rain_threshold = history, rain_threshold
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps import motion, nowcasts

        self._motion = motion.get_method("LK")
        self._extrapolate = nowcasts.get_method("extrapolation")

    def _one(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        """rain: [T, H, W] mm/h -> [t_out, H, W] mm/h."""
        history = rain[-self.history :]
        dbr = np.where(history >= self.rain_threshold, 10.0 * np.log10(np.maximum(history, 1e-6)), -15.0)
        velocity = self._motion(dbr, verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            forecast = self._extrapolate(rain[-1], velocity, t_out)
        return np.nan_to_num(forecast, nan=0.0)

    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **_: float) -> Tensor:
        if inputs.shape[1] < 2:
            raise ValueError("optical flow needs at least 2 input frames to estimate motion")
        rain = self.normalizer.inverse(inputs.detach().double()).cpu().numpy()
        out = np.empty((rain.shape[0], t_out, *rain.shape[2:]))
        for b in range(rain.shape[0]):
            for ch in range(rain.shape[2]):
                out[b, :, ch] = self._one(rain[b, :, ch], t_out)
        return self.normalizer.forward(torch.from_numpy(out)).to(inputs)
