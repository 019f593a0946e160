"""Post-processing of a forecast in mm/h: probability matching to the last observed frame.

A network trained on a pixel loss spreads its intensities: the cores of heavy rain are flattened
and light rain is widened, so it loses at 5 and 10 mm/h what its placement would earn. pysteps'
S-PROG ends the same way and restores the observed distribution by matching the forecast's
empirical CDF to the last observed field's (``pysteps.postprocessing.probmatching``). Here the same,
with nodata kept as nodata: each lead's pixels keep their rank in the forecast and take the value
of the same rank among the last observation's valid pixels. Where the forecast is dry (0), it stays
dry; when it is wet over fewer pixels than the observation, the observation's lightest rain is
dropped so the wet area is the forecast's.

Not ``pysteps.postprocessing.probmatching.nonparam_match_empirical_cdf`` itself: it reads a NaN in the
target field as its dry value, so nodata would count as observed dry rain unless both masks agree.
It runs on the request path of a matched model: one sort per lead of the grid's pixels.
"""

from __future__ import annotations

import numpy as np

#: how a forecast is post-processed: "none", or "cdf" (its distribution matched to the last observation's)
PROBABILITY_MATCHING = ("none", "cdf")


def check_probability_matching(method: str) -> str:
    if method not in PROBABILITY_MATCHING:
        raise ValueError(f"probability matching must be one of {', '.join(PROBABILITY_MATCHING)}, got {method!r}")
    return method


def match_cdf(forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """[..., L, H, W] forecast and [..., H, W] last observation (mm/h, NaN = nodata) -> the forecast
    with each lead's values replaced by the observation's value of the same rank (over the pixels
    valid in both); NaN stays NaN. A dry observation leaves the forecast dry."""
    forecast = np.asarray(forecast)
    observed = np.asarray(observed)
    if forecast.shape[:-3] + forecast.shape[-2:] != observed.shape:
        raise ValueError(f"forecast {forecast.shape} and observation {observed.shape} are not on the same grid")
    out = forecast.copy()
    flat_f = out.reshape(-1, *forecast.shape[-3:])
    flat_o = observed.reshape(-1, *observed.shape[-2:])
    for sample, reference in zip(flat_f, flat_o, strict=True):
        for lead in sample:  # views: written in place
            valid = np.isfinite(lead) & np.isfinite(reference)
            lead[valid] = _matched(lead[valid], reference[valid])
    return out


def _matched(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` re-valued with ``reference``'s distribution, ranks kept (both 1-D, same length)."""
    target = np.sort(reference)
    dry = ~(values > 0)
    wet = values.size - int(dry.sum())
    if wet < int((target > 0).sum()):  # the forecast's wet area wins: drop the lightest observed rain
        target[: target.size - wet] = 0.0
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    matched = target[ranks].astype(values.dtype, copy=False)
    matched[dry] = 0.0
    return matched
