"""Forecast verification per lead time, pooled over many forecast cases.

Forecasters judge a nowcast system by scores pooled over a whole verification period: the contingency
counts (hits, misses, false alarms), absolute errors and FSS sums are added up over all cases first and
the scores are computed once at the end. Averaging per-case scores instead would give a dry case with a
single missed pixel the same weight as a big convective event, so it is deliberately not done here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nowcast.contingency import contingency
from pipelines.pysteps_import import quiet_import

# pysteps prints a banner on import; quiet_import keeps it off stdout.
detcatscores = quiet_import("pysteps.verification.detcatscores")
spatialscores = quiet_import("pysteps.verification.spatialscores")

#: rain-rate thresholds (mm/h) for the categorical scores, from light rain to heavy convection
THRESHOLDS_MM_H: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: FSS event threshold (mm/h) and neighbourhood size (km): the usual "is it raining nearby" question
FSS_THRESHOLD_MM_H = 1.0
FSS_WINDOW_KM = 10.0

_CAT_SCORES = ("CSI", "POD", "FAR")


def _key(threshold: float) -> str:
    """Stable JSON key for a threshold: 1 -> "1.0", 0.5 -> "0.5"."""
    return str(float(threshold))


def _none_if_undefined(value: float) -> float | None:
    """0/0 scores become None (JSON null) rather than NaN, which JSON cannot represent."""
    value = float(value)
    return value if math.isfinite(value) else None


def fss_window_pixels(window_km: float, pixel_size_km: float) -> int:
    """FSS window in pixels: window_km / pixel_size_km rounded half up, at least 1.

    pysteps' fss_accum uses scipy's uniform_filter, which accepts even sizes too, so the window is not
    forced to be odd.
    """
    if pixel_size_km <= 0:
        raise ValueError(f"pixel_size_km must be positive, got {pixel_size_km}")
    return max(1, math.floor(window_km / pixel_size_km + 0.5))


class LeadTimeVerifier:
    """Accumulates scores over many forecast cases, separately for each lead time.

    Feed it one case at a time with accumulate() and read the pooled scores with result(); memory use does
    not grow with the number of cases because only sums and counts are kept.
    """

    def __init__(
        self,
        n_leads: int,
        step_minutes: float,
        pixel_size_km: float,
        thresholds: Sequence[float] = THRESHOLDS_MM_H,
        fss_threshold: float = FSS_THRESHOLD_MM_H,
        fss_window_km: float = FSS_WINDOW_KM,
    ) -> None:
        if n_leads < 1:
            raise ValueError(f"n_leads must be at least 1, got {n_leads}")
        if len(thresholds) == 0:
            raise ValueError("at least one threshold is needed")
        self.n_leads = int(n_leads)
        self.step_minutes = float(step_minutes)
        self.pixel_size_km = float(pixel_size_km)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.fss_threshold = float(fss_threshold)
        self.fss_window_km = float(fss_window_km)
        self.fss_window_px = fss_window_pixels(self.fss_window_km, self.pixel_size_km)

        n_thr = len(self.thresholds)
        # Own contingency counts, [lead, threshold]: pysteps' det_cat_fct_accum defines events as value > thr
        # (we need >=) and counts a NaN observation as "no event", so it cannot give us these counts.
        self._hits = np.zeros((self.n_leads, n_thr), dtype=np.int64)
        self._misses = np.zeros((self.n_leads, n_thr), dtype=np.int64)
        self._false_alarms = np.zeros((self.n_leads, n_thr), dtype=np.int64)
        self._correct_negatives = np.zeros((self.n_leads, n_thr), dtype=np.int64)
        self._abs_err_sum = np.zeros(self.n_leads, dtype=np.float64)
        self._n_pixels = np.zeros(self.n_leads, dtype=np.int64)
        self._n_cases = np.zeros(self.n_leads, dtype=np.int64)
        self._fss = [spatialscores.fss_init(self.fss_threshold, self.fss_window_px) for _ in range(self.n_leads)]

    def accumulate(self, forecast: np.ndarray, observed: np.ndarray) -> None:
        """forecast, observed: [n_leads, H, W] rain rate in mm/h; NaN = nodata (either side: the pixel is ignored
        for that lead). Non-finite values (inf) are treated as nodata too.

        A lead with no valid pixel in this case adds nothing, and does not count towards its n_cases.
        """
        forecast = np.asarray(forecast, dtype=np.float64)
        observed = np.asarray(observed, dtype=np.float64)
        expected = (self.n_leads,)
        if forecast.ndim != 3 or observed.shape != forecast.shape or forecast.shape[:1] != expected:
            raise ValueError(
                f"forecast and observed must both be [n_leads={self.n_leads}, H, W]; "
                f"got {forecast.shape} and {observed.shape}"
            )

        for lead in range(self.n_leads):
            f2d, o2d = forecast[lead], observed[lead]
            valid = np.isfinite(f2d) & np.isfinite(o2d)
            n_valid = int(valid.sum())
            if n_valid == 0:
                continue
            f, o = f2d[valid], o2d[valid]

            thresholds = np.asarray(self.thresholds)[:, None]
            counts = contingency((f >= thresholds).astype(np.float64), (o >= thresholds).astype(np.float64), 1.0, 1)
            hits, misses, false_alarms = (np.rint(c).astype(np.int64) for c in counts)
            self._hits[lead] += hits
            self._misses[lead] += misses
            self._false_alarms[lead] += false_alarms
            self._correct_negatives[lead] += n_valid - hits - misses - false_alarms

            self._abs_err_sum[lead] += float(np.abs(f - o).sum())
            self._n_pixels[lead] += n_valid
            self._n_cases[lead] += 1

            # FSS needs whole 2-D fields for the neighbourhood filter, so invalid pixels cannot just be dropped.
            # pysteps' fss_accum sets non-finite values to "no event" in each field separately, so a pixel that
            # is nodata in the observation but rainy in the forecast would count as a false alarm. To treat
            # nodata alike on both sides we set a pixel to 0 mm/h (no event) in BOTH fields wherever EITHER is
            # nodata; valid pixels are left untouched. Such pixels still dilute neighbourhood fractions as dry
            # pixels (scipy's uniform_filter has no notion of missing values).
            if n_valid == valid.size:
                f_fss, o_fss = f2d, o2d
            else:
                f_fss = np.where(valid, f2d, 0.0)
                o_fss = np.where(valid, o2d, 0.0)
            spatialscores.fss_accum(self._fss[lead], f_fss, o_fss)

    def state(self) -> dict:
        """Everything the scores are computed from, as JSON-able lists (one entry per lead).

        The sums are additive: ``merge_state`` of the states of single cases gives the same pooled
        scores as ``accumulate`` of those cases, which is how live verification stores one record per
        forecast and pools any time window later (``nowcast.live_verification``)."""
        return {
            "thresholds": list(self.thresholds), "fss_threshold": self.fss_threshold,
            "fss_window_km": self.fss_window_km, "fss_window_px": self.fss_window_px,
            "pixel_size_km": self.pixel_size_km, "step_minutes": self.step_minutes,
            "hits": self._hits.tolist(), "misses": self._misses.tolist(),
            "false_alarms": self._false_alarms.tolist(), "correct_negatives": self._correct_negatives.tolist(),
            "abs_err_sum": self._abs_err_sum.tolist(), "n_pixels": self._n_pixels.tolist(),
            "n_cases": self._n_cases.tolist(),
            **{f"fss_{k}": [float(s[k]) for s in self._fss] for k in ("sum_fct_sq", "sum_fct_obs", "sum_obs_sq")},
        }

    @classmethod
    def like(cls, state: dict, n_leads: int) -> LeadTimeVerifier:
        """An empty verifier counting as ``state`` was counted, over ``n_leads`` leads."""
        return cls(n_leads, state["step_minutes"], state["pixel_size_km"], thresholds=state["thresholds"],
                   fss_threshold=state["fss_threshold"], fss_window_km=state["fss_window_km"])

    def compatible(self, state: dict) -> bool:
        """Whether ``state`` was counted with this verifier's thresholds, FSS window and step."""
        return (tuple(float(t) for t in state["thresholds"]) == self.thresholds
                and float(state["fss_threshold"]) == self.fss_threshold
                and int(state["fss_window_px"]) == self.fss_window_px
                and abs(float(state["step_minutes"]) - self.step_minutes) < 1e-9)

    def merge_state(self, state: dict) -> None:
        """Add another verifier's ``state()`` (same thresholds, FSS window and step; as many leads
        or fewer: a shorter forecast adds to the first leads only)."""
        if not self.compatible(state):
            raise ValueError("cannot pool scores counted with other thresholds, FSS window or step")
        n = len(state["n_cases"])
        if n > self.n_leads:
            raise ValueError(f"a state of {n} leads does not fit a verifier of {self.n_leads}")
        self._hits[:n] += np.asarray(state["hits"], dtype=np.int64)
        self._misses[:n] += np.asarray(state["misses"], dtype=np.int64)
        self._false_alarms[:n] += np.asarray(state["false_alarms"], dtype=np.int64)
        self._correct_negatives[:n] += np.asarray(state["correct_negatives"], dtype=np.int64)
        self._abs_err_sum[:n] += np.asarray(state["abs_err_sum"], dtype=np.float64)
        self._n_pixels[:n] += np.asarray(state["n_pixels"], dtype=np.int64)
        self._n_cases[:n] += np.asarray(state["n_cases"], dtype=np.int64)
        for lead in range(n):
            for key in ("sum_fct_sq", "sum_fct_obs", "sum_obs_sq"):
                self._fss[lead][key] += float(state[f"fss_{key}"][lead])

    def _categorical(self, lead: int) -> dict[str, dict[str, float | None]]:
        """CSI/POD/FAR for one lead from the pooled counts, computed by pysteps from our contingency table."""
        contab = detcatscores.det_cat_fct_init(self.thresholds[0])
        contab["hits"] = self._hits[lead].astype(np.float64)
        contab["misses"] = self._misses[lead].astype(np.float64)
        contab["false_alarms"] = self._false_alarms[lead].astype(np.float64)
        contab["correct_negatives"] = self._correct_negatives[lead].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN -> None below
            scores = detcatscores.det_cat_fct_compute(contab, scores=list(_CAT_SCORES))
        return {
            name.lower(): {_key(t): _none_if_undefined(v) for t, v in zip(self.thresholds, scores[name], strict=True)}
            for name in _CAT_SCORES
        }

    def _fss_value(self, lead: int) -> float | None:
        """Pooled FSS; None when neither field ever had an event (0/0) or no case was seen."""
        state = self._fss[lead]
        if state["sum_fct_sq"] + state["sum_obs_sq"] == 0:
            return None
        return _none_if_undefined(spatialscores.fss_compute(state))

    def result(self) -> list[dict]:
        """One dict per lead: {"lead_minutes": float, "n_cases": int,
            "csi": {"0.5": v, "1.0": v, ...}, "pod": {...}, "far": {...},
            "hits": {...}, "misses": {...}, "false_alarms": {...},   # the pooled counts, ints
            "mae_mm_h": float, "fss_1mm_10km": float}

        Undefined scores are None. The FSS key keeps its name even if another threshold/window was configured
        (see fss_threshold, fss_window_px).
        """
        out: list[dict] = []
        for lead in range(self.n_leads):
            keys = [_key(t) for t in self.thresholds]
            row: dict = {"lead_minutes": (lead + 1) * self.step_minutes, "n_cases": int(self._n_cases[lead])}
            row.update(self._categorical(lead))
            row["hits"] = {k: int(v) for k, v in zip(keys, self._hits[lead], strict=True)}
            row["misses"] = {k: int(v) for k, v in zip(keys, self._misses[lead], strict=True)}
            row["false_alarms"] = {k: int(v) for k, v in zip(keys, self._false_alarms[lead], strict=True)}
            n = int(self._n_pixels[lead])
            row["mae_mm_h"] = float(self._abs_err_sum[lead] / n) if n else None
            row["fss_1mm_10km"] = self._fss_value(lead)
            out.append(row)
        return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def scores_table_markdown(results: Mapping[str, list[dict]], thresholds: Sequence[float] = (1.0, 5.0)) -> str:
    """Markdown table, one row per (model, lead time): CSI at the given thresholds, MAE and FSS.

    results maps a model name to LeadTimeVerifier.result(); meant for reports and README comparisons.
    """
    header = ["model", "lead (min)", *[f"CSI ≥{float(t):g} mm/h" for t in thresholds], "MAE (mm/h)", "FSS"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for model, rows in results.items():
        for row in rows:
            cells = [str(model), f"{row['lead_minutes']:g}"]
            cells += [_fmt(row["csi"][_key(t)]) for t in thresholds]
            cells += [_fmt(row["mae_mm_h"]), _fmt(row["fss_1mm_10km"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
