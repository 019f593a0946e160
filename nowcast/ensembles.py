"""Probabilistic outputs: what a forecaster may offer beyond one field, and how members become probabilities.

A model offers ``"deterministic"`` always (``forward``), ``"ensemble"`` when it defines
``forward_ensemble(inputs, t_out, members) -> [B, members, t_out, C, H, W]`` and ``"probability"``
when it defines ``forward_probabilities(inputs, t_out, thresholds) -> [B, t_out, len(thresholds), H, W]``
(0..1; ``thresholds`` normalised like the inputs, so "at or above" means the same in both spaces) or
has members to count. ``steps`` (pysteps STEPS) offers members; a trained probabilistic network may
offer either. ``LoadedForecaster.predict_ensemble`` / ``predict_probabilities`` are the mm/h entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.pysteps_import import quiet_import

#: every kind of output, in the order ``outputs`` lists them
OUTPUTS = ("deterministic", "probability", "ensemble")


def model_outputs(model: object) -> list[str]:
    """The outputs a model (``nowcast.models`` instance) offers, from the methods it defines."""
    ensemble = callable(getattr(model, "forward_ensemble", None))
    probability = ensemble or callable(getattr(model, "forward_probabilities", None))
    return [o for o, offered in zip(OUTPUTS, (True, probability, ensemble), strict=True) if offered]


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Thresholds as floats: at least one, each finite and above 0 mm/h (everything exceeds 0)."""
    values = [float(t) for t in thresholds]
    if not values:
        raise ValueError("give at least one threshold (mm/h)")
    bad = [t for t in values if not np.isfinite(t) or t <= 0]
    if bad:
        raise ValueError(f"thresholds must be finite rain rates above 0 mm/h, got {bad}")
    return values


def exceedance_probabilities(members: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """[..., M, L, H, W] members (mm/h, NaN = nodata) -> [..., L, K, H, W] P(rate >= threshold) in 0..1,
    NaN where a member is nodata. pysteps' ``excprob``, one lead at a time so its float64 working
    copy stays one lead's size."""
    excprob = quiet_import("pysteps.postprocessing.ensemblestats").excprob
    thresholds = check_thresholds(thresholds)
    members = np.asarray(members)
    lead_shape = members.shape[-4:]
    flat = members.reshape(-1, *lead_shape)
    out = np.empty((flat.shape[0], lead_shape[1], len(thresholds), *lead_shape[2:]), dtype=np.float32)
    for i, sample in enumerate(flat):
        for lead in range(lead_shape[1]):
            out[i, lead] = excprob(sample[:, lead], thresholds)  # [K, H, W]
    return out.reshape(*members.shape[:-4], *out.shape[1:])
