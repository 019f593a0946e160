"""Probabilistic verification per lead time, pooled over cases like ``nowcast.verification``.

Scores (``pysteps.verification.probscores``, not new formulas, except where pysteps has none):

- CRPS (mm/h) of the members: ``CRPS_init/accum/compute``. A deterministic forecast is a one-member
  ensemble, whose CRPS is its mean absolute error: every model gets one, so they compare.
- Brier score at each threshold (1, 5, 10 mm/h): pysteps has no Brier score, so it is the plain mean of
  (p - o)^2 over valid pixels. Its reliability / resolution / uncertainty parts (Murphy 1973) come from
  pysteps' reliability-diagram accumulation (``reldiag_init/accum``: per probability bin the count, the
  sum of forecast probabilities and the observed events): REL = sum n_k (p_k - o_k)^2 / N,
  RES = sum n_k (o_k - o)^2 / N, UNC = o (1 - o). With binned probabilities REL - RES + UNC differs from
  the Brier score by the forecasts' spread inside the bins (small with 10 bins and 20 members).
- ROC area: ``ROC_curve_init/accum/compute(compute_area=True)`` at 11 probability thresholds 0, 0.1 .. 1.
- The reliability diagram itself (per bin: mean forecast probability, observed frequency, count).

Events are "rate >= threshold", as the categorical scores count them; a pixel counts where the
observation and the forecast are both valid (finite). Only sums and counts are kept, so memory does
not grow with the number of cases, and ``state`` / ``merge_state`` pool per-forecast records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nowcast.ensembles import exceedance_probabilities
from pipelines.pysteps_import import quiet_import

if TYPE_CHECKING:
    from nowcast.forecaster import LoadedForecaster

probscores = quiet_import("pysteps.verification.probscores")

#: thresholds (mm/h) of the Brier score, ROC area and reliability diagram
PROB_THRESHOLDS_MM_H: tuple[float, ...] = (1.0, 5.0, 10.0)
#: probability bins of the reliability diagram (and so of the Brier decomposition)
RELIABILITY_BINS = 10
#: probability thresholds of the ROC curve: 0, 0.1, ..., 1
ROC_PROBABILITY_THRESHOLDS = 11
#: pixels per CRPS accumulation: pysteps' CRPS_accum holds two float64 [pixels, members + 1] arrays
CRPS_CHUNK_PIXELS = 200_000


def _key(threshold: float) -> str:
    return str(float(threshold))


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class ProbabilisticVerifier:
    """Accumulates CRPS, Brier score parts, ROC curves and reliability diagrams per lead time; with no
    ``thresholds``, CRPS alone (what a deterministic model is scored on: the rest would be its CSI again)."""

    def __init__(self, n_leads: int, step_minutes: float, thresholds: Sequence[float] = PROB_THRESHOLDS_MM_H,
                 n_bins: int = RELIABILITY_BINS, n_roc: int = ROC_PROBABILITY_THRESHOLDS) -> None:
        if n_leads < 1:
            raise ValueError(f"n_leads must be at least 1, got {n_leads}")
        self.n_leads, self.step_minutes = int(n_leads), float(step_minutes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.n_bins, self.n_roc = int(n_bins), int(n_roc)
        leads, k = range(self.n_leads), range(len(self.thresholds))
        self._crps = [probscores.CRPS_init() for _ in leads]
        # min_count 0: every pair is counted in its bin; sparse bins are left out when plotted, not here
        self._reldiag = [[probscores.reldiag_init(t, self.n_bins, 0) for t in self.thresholds] for _ in leads]
        self._roc = [[probscores.ROC_curve_init(t, self.n_roc) for t in self.thresholds] for _ in leads]
        self._brier_sum = np.zeros((self.n_leads, len(k)))
        self._brier_n = np.zeros((self.n_leads, len(k)), dtype=np.int64)
        self._n_cases = np.zeros(self.n_leads, dtype=np.int64)

    def accumulate(self, observed: np.ndarray, members: np.ndarray | None = None,
                   probabilities: np.ndarray | None = None) -> None:
        """observed [L, H, W] mm/h; ``members`` [M, L, H, W] mm/h and/or ``probabilities`` [L, K, H, W]
        (K = len(thresholds), 0..1). Probabilities default to the members' exceedance fractions; CRPS
        needs members (None without). NaN on either side: the pixel is left out."""
        observed = np.asarray(observed, dtype=np.float64)
        if observed.ndim != 3 or observed.shape[0] != self.n_leads:
            raise ValueError(f"observed must be [n_leads={self.n_leads}, H, W], got {observed.shape}")
        if members is None and probabilities is None:
            raise ValueError("give members, probabilities or both")
        if members is not None:
            members = np.asarray(members, dtype=np.float64)
            if members.ndim != 4 or members.shape[1:] != observed.shape:
                raise ValueError(f"members must be [M, {', '.join(map(str, observed.shape))}], got {members.shape}")
        if not self.thresholds:  # CRPS alone (a deterministic model's)
            probabilities = np.zeros((self.n_leads, 0, *observed.shape[1:]))
        elif probabilities is None:
            probabilities = exceedance_probabilities(members, self.thresholds)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        expected = (self.n_leads, len(self.thresholds), *observed.shape[1:])
        if probabilities.shape != expected:
            raise ValueError(f"probabilities must be {list(expected)}, got {list(probabilities.shape)}")
        for lead in range(self.n_leads):
            obs = observed[lead].ravel()
            valid = np.isfinite(obs) & np.isfinite(probabilities[lead]).all(axis=0).ravel()
            if members is not None:
                valid &= np.isfinite(members[:, lead]).all(axis=0).ravel()
            if not valid.any():
                continue
            self._n_cases[lead] += 1
            obs = obs[valid]
            if members is not None:
                ens = members[:, lead].reshape(members.shape[0], -1)[:, valid]
                for start in range(0, obs.size, CRPS_CHUNK_PIXELS):
                    part = slice(start, start + CRPS_CHUNK_PIXELS)
                    probscores.CRPS_accum(self._crps[lead], ens[:, part], obs[part])
            for k, threshold in enumerate(self.thresholds):
                p = probabilities[lead, k].ravel()[valid]
                event = (obs >= threshold).astype(np.float64)
                self._brier_sum[lead, k] += float(np.sum((p - event) ** 2))
                self._brier_n[lead, k] += obs.size
                probscores.reldiag_accum(self._reldiag[lead][k], p, obs)
                probscores.ROC_curve_accum(self._roc[lead][k], p, obs)

    # -- pooling records (live verification) ------------------------------------------------------

    def state(self) -> dict:
        """The sums every score is computed from, JSON-able; ``merge_state`` of per-case states pools them."""
        return {
            "thresholds": list(self.thresholds), "n_bins": self.n_bins, "n_roc": self.n_roc,
            "step_minutes": self.step_minutes, "n_cases": self._n_cases.tolist(),
            "crps_sum": [float(c["CRPS_sum"]) for c in self._crps], "crps_n": [float(c["n"]) for c in self._crps],
            "brier_sum": self._brier_sum.tolist(), "brier_n": self._brier_n.tolist(),
            **{f"reldiag_{name}": [[r[name].tolist() for r in row] for row in self._reldiag]
               for name in ("X_sum", "Y_sum", "num_idx")},
            **{f"roc_{name}": [[r[name].tolist() for r in row] for row in self._roc]
               for name in ("hits", "misses", "false_alarms", "corr_neg")},
        }

    def compatible(self, state: dict) -> bool:
        """Whether ``state`` was counted with these bins and step, at thresholds this verifier also counts
        (the same or fewer: a record with fewer thresholds adds to those it has)."""
        return (set(float(t) for t in state["thresholds"]) <= set(self.thresholds) and state["n_bins"] == self.n_bins
                and state["n_roc"] == self.n_roc and abs(float(state["step_minutes"]) - self.step_minutes) < 1e-9)

    def merge_state(self, state: dict) -> None:
        """Add another verifier's ``state()`` (same bins and step, thresholds among this one's; as many
        leads or fewer). Each threshold's sums go to that threshold; ``n_cases`` counts the cases of any."""
        if not self.compatible(state):
            raise ValueError("cannot pool probabilistic scores counted with other thresholds, bins or step")
        n = len(state["n_cases"])
        if n > self.n_leads:
            raise ValueError(f"a state of {n} leads does not fit a verifier of {self.n_leads}")
        ks = [self.thresholds.index(float(t)) for t in state["thresholds"]]  # its thresholds among ours
        self._n_cases[:n] += np.asarray(state["n_cases"], dtype=np.int64)
        if ks:
            self._brier_sum[:n, ks] += np.asarray(state["brier_sum"], dtype=np.float64).reshape(n, len(ks))
            self._brier_n[:n, ks] += np.asarray(state["brier_n"], dtype=np.int64).reshape(n, len(ks))
        for lead in range(n):
            self._crps[lead]["CRPS_sum"] += state["crps_sum"][lead]
            self._crps[lead]["n"] += state["crps_n"][lead]
            for j, k in enumerate(ks):
                for name in ("X_sum", "Y_sum", "num_idx"):
                    self._reldiag[lead][k][name] += np.asarray(state[f"reldiag_{name}"][lead][j]).astype(
                        self._reldiag[lead][k][name].dtype)
                for name in ("hits", "misses", "false_alarms", "corr_neg"):
                    self._roc[lead][k][name] += np.asarray(state[f"roc_{name}"][lead][j], dtype=int)

    # -- scores ------------------------------------------------------------------------------------

    def _brier_parts(self, lead: int, k: int) -> dict[str, float | None]:
        """Reliability, resolution and uncertainty from the reliability diagram's per-bin sums."""
        rd = self._reldiag[lead][k]
        counts = rd["num_idx"].astype(np.float64)
        total = counts.sum()
        if total == 0:
            return {"reliability": None, "resolution": None, "uncertainty": None}
        used = counts > 0
        p_bin = rd["X_sum"][used] / counts[used]
        o_bin = rd["Y_sum"][used] / counts[used]
        o_all = rd["Y_sum"].sum() / total
        return {"reliability": float(np.sum(counts[used] * (p_bin - o_bin) ** 2) / total),
                "resolution": float(np.sum(counts[used] * (o_bin - o_all) ** 2) / total),
                "uncertainty": float(o_all * (1.0 - o_all))}

    def _roc_area(self, lead: int, k: int) -> float | None:
        roc = self._roc[lead][k]
        events, non_events = roc["hits"][0] + roc["misses"][0], roc["false_alarms"][0] + roc["corr_neg"][0]
        if events == 0 or non_events == 0:  # POD or POFD undefined
            return None
        return _finite_or_none(probscores.ROC_curve_compute(roc, compute_area=True)[2])

    def reliability_diagram(self, lead: int, k: int) -> dict[str, list]:
        """Per probability bin: mean forecast probability, observed frequency (None where empty), count."""
        rd = self._reldiag[lead][k]
        counts = rd["num_idx"]
        with np.errstate(invalid="ignore", divide="ignore"):
            forecast, observed = probscores.reldiag_compute(rd)
        return {"forecast_probability": [_finite_or_none(v) for v in forecast],
                "observed_frequency": [_finite_or_none(v) for v in observed],
                "count": [int(c) for c in counts]}

    def result(self) -> list[dict]:
        """One dict per lead: lead_minutes, n_cases, crps (mm/h), and per threshold (mm/h, as text):
        brier, brier_skill (1 - BS / UNC), brier_reliability, brier_resolution, brier_uncertainty,
        roc_area and reliability_diagram. Undefined scores are None."""
        out = []
        for lead in range(self.n_leads):
            crps = self._crps[lead]
            row: dict = {"lead_minutes": (lead + 1) * self.step_minutes, "n_cases": int(self._n_cases[lead]),
                         "crps": float(probscores.CRPS_compute(crps)) if crps["n"] else None}
            for name in ("brier", "brier_skill", "brier_reliability", "brier_resolution", "brier_uncertainty",
                         "roc_area", "reliability_diagram"):
                row[name] = {}
            for k, threshold in enumerate(self.thresholds):
                key = _key(threshold)
                n = int(self._brier_n[lead, k])
                bs = float(self._brier_sum[lead, k] / n) if n else None
                parts = self._brier_parts(lead, k)
                unc = parts["uncertainty"]
                row["brier"][key] = bs
                row["brier_skill"][key] = 1.0 - bs / unc if bs is not None and unc else None
                for part, value in parts.items():
                    row[f"brier_{part}"][key] = value
                row["roc_area"][key] = self._roc_area(lead, k)
                row["reliability_diagram"][key] = self.reliability_diagram(lead, k)
            out.append(row)
        return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def scored_thresholds(results: dict[str, list[dict]]) -> list[float]:
    """The thresholds (mm/h) any model's rows have a Brier score at, in increasing order."""
    return sorted({float(key) for rows in results.values() for row in rows for key in row.get("brier") or {}})


def probabilistic_table_markdown(results: dict[str, list[dict]], thresholds: Sequence[float] | None = None) -> str:
    """Markdown: per (model, lead) CRPS, then Brier score and ROC area at each threshold (default: those the
    rows hold, e.g. a backfill store's own; else 1, 5 and 10 mm/h)."""
    thresholds = thresholds or scored_thresholds(results) or PROB_THRESHOLDS_MM_H
    header = ["model", "lead (min)", "CRPS (mm/h)", *[f"BS ≥{t:g}" for t in thresholds],
              *[f"ROC area ≥{t:g}" for t in thresholds]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for model, rows in results.items():
        for row in rows:
            cells = [model, f"{row['lead_minutes']:g}", _fmt(row.get("crps"))]
            cells += [_fmt(row.get("brier", {}).get(_key(t))) for t in thresholds]
            cells += [_fmt(row.get("roc_area", {}).get(_key(t))) for t in thresholds]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def case_forecasts(forecaster: LoadedForecaster, past: np.ndarray, leads: int, step: float,
                   auxiliary: dict | None = None, members: int | None = None,
                   thresholds: Sequence[float] = PROB_THRESHOLDS_MM_H) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One case's deterministic forecast [L, H, W] and what ``ProbabilisticVerifier.accumulate`` scores
    (empty for a deterministic model, or for frames a probabilistic one cannot take: another step).

    A model with members: the deterministic forecast is their mean (one STEPS run gives both); one with
    probabilities only: its ``predict`` and ``predict_probabilities``."""
    outputs = forecaster.outputs
    probabilistic = not forecaster.resamples(step) and not forecaster.auxiliary
    if probabilistic and "ensemble" in outputs:
        ensemble = forecaster.predict_ensemble(past, leads, members, step)
        return ensemble.mean(axis=0), {"members": ensemble}
    deterministic = forecaster.predict(past, leads, step, auxiliary=auxiliary)
    if probabilistic and "probability" in outputs:
        return deterministic, {"probabilities": forecaster.predict_probabilities(past, leads, list(thresholds),
                                                                                 members, step)}
    return deterministic, {}


def verification_thresholds(forecaster: LoadedForecaster) -> tuple[float, ...]:
    """The thresholds (1, 5, 10 mm/h) a model's probabilities are verified at: none for a model without
    probabilities; for one with its own thresholds (a probabilistic network's head), those inside their
    range, not ones it would only extrapolate to; for one that counts members, all of them."""
    if "probability" not in forecaster.outputs:
        return ()
    own = getattr(forecaster.model, "thresholds", None) if "ensemble" not in forecaster.outputs else None
    if not own:
        return PROB_THRESHOLDS_MM_H
    low, high = min(own), max(own)
    return tuple(t for t in PROB_THRESHOLDS_MM_H if low <= t <= high)


def probabilistic_scores(verifier: ProbabilisticVerifier | None, deterministic: list[dict]) -> list[dict]:
    """A model's ``probabilistic`` rows: its verifier's, or for a deterministic model its CRPS alone,
    which for a one-member ensemble is the mean absolute error (pysteps' CRPS_accum reduces to |f - o|;
    tests/test_probabilistic_verification.py checks it), so it is taken from the pooled MAE for free."""
    if verifier is not None:
        return verifier.result()
    return [{"lead_minutes": row["lead_minutes"], "n_cases": row["n_cases"], "crps": row["mae_mm_h"]}
            for row in deterministic]


def write_probabilistic_outputs(report: dict, markdown: Path, out: Path) -> None:
    """Beside ``nowcast evaluate``'s report, for the models that forecast probabilities: their CRPS /
    Brier / ROC table appended to the markdown (a deterministic model's CRPS is the MAE it shows already),
    and ``<out>_reliability.png`` (one lead, near 30 min)."""
    results = {label: entry["probabilistic"] for label, entry in report["models"].items()
               if "probability" in entry.get("outputs", []) and "probabilistic" in entry}
    if not results:
        return
    with markdown.open("a") as handle:
        handle.write("## Probabilistic scores\n\n" + probabilistic_table_markdown(results) + "\n")
    if report["n_cases"]:
        from nowcast.probabilistic_plots import plot_reliability_diagram

        png = plot_reliability_diagram(results, out.with_name(out.stem + "_reliability.png"))
        report["files"]["reliability_png"] = str(png)
