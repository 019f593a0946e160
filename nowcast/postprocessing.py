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

``cdf_wet`` matches only the rain at or above ``WET_THRESHOLD`` (1 mm/h): the forecast's area of
that rain is kept pixel for pixel and only the intensities inside it take the observation's
distribution above the threshold (by quantile, so the two areas need not be the same size). Why:
full matching also shrinks the rain area to the observation's, which costs a smoothing network CSI
at 1 mm/h (on the TAASRAD19 validation month, 0.356 -> 0.336 for ``convlstm_sprog_taasrad19``);
matching inside the area restores the cores without touching what verifies at 1 mm/h.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: how a forecast is post-processed: "none", "cdf" (its distribution matched to the last observation's)
#: or "cdf_wet" (only the intensities inside its rain area at WET_THRESHOLD matched)
PROBABILITY_MATCHING = ("none", "cdf", "cdf_wet")
#: mm/h: the rain area ``cdf_wet`` keeps
WET_THRESHOLD = 1.0


def check_probability_matching(method: str) -> str:
    if method not in PROBABILITY_MATCHING:
        raise ValueError(f"probability matching must be one of {', '.join(PROBABILITY_MATCHING)}, got {method!r}")
    return method


def post_process(method: str, forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``forecast`` post-processed by ``method`` (one of PROBABILITY_MATCHING) against ``observed``."""
    if check_probability_matching(method) == "cdf":
        return match_cdf(forecast, observed)
    if method == "cdf_wet":
        return match_cdf_wet(forecast, observed)
    return forecast


def match_cdf(forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """[..., L, H, W] forecast and [..., H, W] last observation (mm/h, NaN = nodata) -> the forecast
    with each lead's values replaced by the observation's value of the same rank (over the pixels
    valid in both); NaN stays NaN. A dry observation leaves the forecast dry."""

    def match(lead: np.ndarray, reference: np.ndarray) -> None:
        valid = np.isfinite(lead) & np.isfinite(reference)
        lead[valid] = _matched(lead[valid], reference[valid])

    return _each_lead(forecast, observed, match)


def _each_lead(forecast: np.ndarray, observed: np.ndarray,
               match: Callable[[np.ndarray, np.ndarray], None]) -> np.ndarray:
    """A copy of ``forecast`` [..., L, H, W] with ``match(lead, last observation)`` applied in place to
    each lead's [H, W] view, after checking the two are on the same grid."""
    forecast = np.asarray(forecast)
    observed = np.asarray(observed)
    if forecast.shape[:-3] + forecast.shape[-2:] != observed.shape:
        raise ValueError(f"forecast {forecast.shape} and observation {observed.shape} are not on the same grid")
    out = forecast.copy()
    for sample, reference in zip(out.reshape(-1, *forecast.shape[-3:]), observed.reshape(-1, *observed.shape[-2:]),
                                 strict=True):
        for lead in sample:  # views: written in place
            match(lead, reference)
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


def match_cdf_wet(forecast: np.ndarray, observed: np.ndarray, threshold: float = WET_THRESHOLD) -> np.ndarray:
    """As ``match_cdf``, but only each lead's pixels at or above ``threshold`` change: the one of rank
    r among the n of them takes the observation's quantile r / (n - 1) of its own valid pixels at or
    above ``threshold``. The area at ``threshold`` is the forecast's exactly; below it nothing moves.
    An observation with no such rain leaves the lead as it is."""

    def match(lead: np.ndarray, reference: np.ndarray) -> None:
        heavy = np.sort(reference[np.isfinite(reference) & (reference >= threshold)])
        wet = np.isfinite(lead) & (lead >= threshold)
        n = int(wet.sum())
        if heavy.size == 0 or n == 0:
            return
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.argsort(lead[wet], kind="stable")] = np.arange(n)
        quantiles = ranks / (n - 1) if n > 1 else np.ones(1)
        lead[wet] = np.interp(quantiles, np.linspace(0.0, 1.0, heavy.size), heavy).astype(lead.dtype, copy=False)

    return _each_lead(forecast, observed, match)
