"""``steps``: pysteps STEPS (Bowler et al. 2006, Seed et al. 2013), the probabilistic baseline.

Lucas-Kanade motion on the last frames, then pysteps' STEPS with its defaults: a 6-level FFT cascade,
AR(2) per level, nonparametric noise, "bps" motion perturbations and the incremental mask, run in dBR
(``pipelines.motion.to_dbr``: 0.1 mm/h threshold, -15 dBR zero value) as pysteps recommends.

It offers what a probabilistic network would offer (``LoadedForecaster.outputs``):

- ``forward_ensemble(inputs, t_out, members)``: ``members`` equally likely futures;
- ``forward(inputs, t_out)``: the deterministic forecast, which is the **ensemble mean** (a smooth
  field: it scores well on MAE and CSI at low thresholds, and badly at high ones);
- exceedance probabilities come from the members (``pysteps.postprocessing.ensemblestats.excprob``,
  in ``LoadedForecaster.predict_probabilities``).

Velocity perturbations assume ``kmperpixel`` and ``timestep`` (1 km, 5 min by default: the
composites this project ingests); the model is seeded, so the same frames give the same members.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from nowcast.models.baselines import MotionBaseline
from pipelines.motion import MOTION_HISTORY, RAIN_THRESHOLD_MM_H, motion_field, to_dbr
from pipelines.pysteps_import import quiet, quiet_import

#: members when the caller does not say (the issue's default; pysteps' own is 24)
DEFAULT_MEMBERS = 20
#: frames STEPS fits its AR(2) on
AR_FRAMES = 3


class Steps(MotionBaseline):
    """pysteps STEPS ensemble; ``forward`` is the ensemble mean, ``forward_ensemble`` the members."""

    fitted_in_time = True  # the AR(2) is fitted at the frames' own step, like S-PROG's

    def __init__(self, normalization: dict | None = None, history: int = MOTION_HISTORY,
                 members: int = DEFAULT_MEMBERS, n_cascade_levels: int = 6, seed: int = 0,
                 kmperpixel: float = 1.0, timestep: float = 5.0, num_workers: int = 1):
        super().__init__(normalization, max(history, AR_FRAMES))
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.members, self.n_cascade_levels, self.seed = members, n_cascade_levels, seed
        self.kmperpixel, self.timestep, self.num_workers = kmperpixel, timestep, num_workers
        # the last ensemble, by content: evaluate asks for the mean and the members of the same frames
        self._last: tuple[tuple, np.ndarray] | None = None

    def ensemble_mm_h(self, rain: np.ndarray, t_out: int, members: int | None = None) -> np.ndarray:
        """rain [T, H, W] mm/h (no NaN: callers fill nodata) -> [members, t_out, H, W] mm/h, finite, >= 0.

        Pixels STEPS cannot fill (advected in from outside the grid) are dry; the forecaster masks
        nodata afterwards, where the last observed frame had none."""
        members = self.members if members is None else int(members)
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        frames = np.nan_to_num(np.asarray(rain, dtype=np.float64)[-AR_FRAMES:], nan=0.0)
        if frames.shape[0] < AR_FRAMES:
            raise ValueError(f"STEPS needs {AR_FRAMES} input frames (AR(2)), got {frames.shape[0]}")
        digest = hashlib.blake2b(np.ascontiguousarray(frames).view(np.uint8), digest_size=16).hexdigest()
        key = (digest, frames.shape, t_out, members, self.seed, self.n_cascade_levels)
        if self._last is not None and self._last[0] == key:
            return self._last[1].copy()
        shape = (members, t_out, *frames.shape[1:])
        if not (frames[-1] >= RAIN_THRESHOLD_MM_H).any():  # nothing to perturb: STEPS refuses a dry field
            return np.zeros(shape, dtype=np.float32)
        nowcasts = quiet_import("pysteps.nowcasts")
        velocity = motion_field(frames, self.history)
        threshold = 10.0 * np.log10(RAIN_THRESHOLD_MM_H)
        with quiet(), np.errstate(invalid="ignore", divide="ignore"):
            dbr = nowcasts.get_method("steps")(
                to_dbr(frames), velocity, t_out, n_ens_members=members, n_cascade_levels=self.n_cascade_levels,
                precip_thr=threshold, kmperpixel=self.kmperpixel, timestep=self.timestep,
                noise_method="nonparametric", vel_pert_method="bps", mask_method="incremental",
                seed=self.seed, num_workers=self.num_workers, measure_time=False,
            )
            dbr = np.asarray(dbr, dtype=np.float64).reshape(shape)
            out = np.where(np.isfinite(dbr) & (dbr >= threshold), 10.0 ** (dbr / 10.0), 0.0).astype(np.float32)
        self._last = (key, out)
        return out.copy()

    def forecast_mm_h(self, rain: np.ndarray, t_out: int) -> np.ndarray:
        """The ensemble mean (mm/h): the deterministic forecast of ``steps``."""
        return self.ensemble_mm_h(rain, t_out).mean(axis=0, dtype=np.float64)

    def forward_ensemble(self, inputs: Tensor, t_out: int, members: int | None = None) -> Tensor:
        """[B, T, C, H, W] normalised -> [B, members, t_out, C, H, W] normalised."""
        if inputs.shape[1] < AR_FRAMES:
            raise ValueError(f"steps needs at least {AR_FRAMES} input frames")
        members = self.members if members is None else int(members)
        rain = self.normalizer.inverse(inputs.detach().double()).cpu().numpy()
        b, _, c, h, w = rain.shape
        out = np.empty((b, members, t_out, c, h, w), dtype=np.float32)
        for i in range(b):
            for ch in range(c):
                out[i, :, :, ch] = self.ensemble_mm_h(rain[i, :, ch], t_out, members)
        return self.normalizer.forward(torch.from_numpy(out)).to(inputs)
