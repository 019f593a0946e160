"""Exceedance probabilities in a backfill's forecast store, beside the deterministic forecast.

``nowcast backfill --threshold 1 --threshold 5`` with a model that offers probabilities (``steps``, a
probabilistic network) adds ``probability(init_time, lead_time, threshold, y, x)``: P(rate >= threshold)
in 0..1, NaN where the forecast is nodata, stored as uint16 ten-thousandths (65535 = nodata), one chunk
per init time and threshold. For a model with members, ``precip`` is then their mean and the
probabilities are counted over the same members (one STEPS run gives both). Init times are forecast
one at a time, so a task holds one init time's members, whatever its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from nowcast.ensembles import check_thresholds, exceedance_probabilities
from nowcast.forecast_store import PROBABILITY_VARIABLE
from nowcast.forecaster import LoadedForecaster

VARIABLE = PROBABILITY_VARIABLE
SCALE = 1e-4
FILL = 65535


def backfill_thresholds(forecaster: LoadedForecaster, thresholds: Sequence[float] | None) -> tuple[float, ...]:
    """The thresholds to store (empty: none asked); refused for a model without probabilities."""
    if not thresholds:
        return ()
    if "probability" not in forecaster.outputs:
        raise ValueError(f"{forecaster.name} forecasts {', '.join(forecaster.outputs)} output, no probabilities; "
                         "--threshold needs a model that offers them (steps, or a probabilistic network)")
    return tuple(check_thresholds(thresholds))


def add_probability_layout(template: xr.Dataset, encoding: dict, thresholds: Sequence[float], lead_steps: int
                           ) -> None:
    """Add the (unwritten) probability variable and its threshold coordinate to a store's template."""
    n_inits = template.sizes["init_time"]
    ny, nx = template.sizes["y"], template.sizes["x"]
    chunks = (1, lead_steps, 1, min(ny, 1024), min(nx, 1024))
    template.coords["threshold"] = ("threshold", np.asarray(thresholds, dtype=np.float64),
                                    {"standard_name": "rainfall_rate", "long_name": "rain rate threshold",
                                     "units": "mm/h", "spp__relative_to_threshold": "greater_than_or_equal_to"})
    attrs = {"long_name": "probability of rain rate at or above threshold", "units": "1"}
    if "grid_mapping" in template["precip"].attrs:
        attrs["grid_mapping"] = template["precip"].attrs["grid_mapping"]
    template[VARIABLE] = (("init_time", "lead_time", "threshold", "y", "x"),
                          da.full((n_inits, lead_steps, len(thresholds), ny, nx), np.nan, dtype=np.float32,
                                  chunks=chunks), attrs)
    encoding[VARIABLE] = {"dtype": "uint16", "scale_factor": SCALE, "_FillValue": FILL, "chunks": chunks}


def check_stored_thresholds(existing: xr.Dataset, thresholds: Sequence[float], out: str) -> None:
    """A resumed store must be asked for the thresholds it was laid out with (or none, without any)."""
    held = tuple(float(t) for t in existing["threshold"].values) if VARIABLE in existing else ()
    if held != tuple(thresholds):
        raise ValueError(f"{out} holds probabilities at thresholds {list(held)} mm/h; resume with the same "
                         "--threshold options, or use a new --out")


def forecast_and_probabilities(forecaster: LoadedForecaster, window: np.ndarray, lead_steps: int,
                               step_minutes: float | None, thresholds: Sequence[float], members: int | None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """[B, T, H, W] history -> forecasts [B, L, H, W] mm/h and probabilities [B, L, K, H, W], one init
    time at a time (memory: one init time's members)."""
    forecasts, probabilities = [], []
    for frames in window:
        if "ensemble" in forecaster.outputs:
            ensemble = forecaster.predict_ensemble(frames, lead_steps, members, step_minutes)
            forecasts.append(ensemble.mean(axis=0))
            probabilities.append(exceedance_probabilities(ensemble, thresholds))
        else:
            forecasts.append(forecaster.predict(frames, lead_steps, step_minutes))
            probabilities.append(forecaster.predict_probabilities(frames, lead_steps, list(thresholds), members,
                                                                  step_minutes))
    return np.stack(forecasts), np.stack(probabilities)
