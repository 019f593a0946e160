"""Promotion: verify a candidate and the production model on the archive's latest window, and
make the candidate production only when it wins by the configured rule (``configs/promotion.yaml``).

Two promotions at once must not install the worse model: scoring runs unlocked (it is the slow
part), then the decision is taken under the model store's promotion lock and the pointer moves
by compare-and-swap against the production version the candidate was scored against. One that
lost the race (production moved meanwhile) scores again against the new production, and says so
in its decision (``rescored_against``). The decision is written into the candidate's metadata
before the pointer moves (``pointer_moved: false``), then confirmed; a kill in between is
settled by the next promotion (``settle_interrupted``), which also removes leftover temporary files.

Evidence: the candidate is scored only on cases it never saw. Its checkpoint records its training
data (products, time range, split); a case any of whose frames lay in a 'train' or 'val' block
of that product within that range is left out, and a window with no other case is refused
(``reason: "window overlaps training data"``). On the same cases the production model and
optical flow are scored too, and the decision says in words why it promoted or kept
(``explanation``), naming a candidate that is below optical flow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.model_store import PROMOTE_LOCK, ModelStore, ProductionChanged
from pipelines.query import utc_text

#: exit codes a scheduler can act on
PROMOTED, KEPT_PRODUCTION, FAILED = 0, 3, 2
HIGHER_IS_BETTER = {"csi": True, "pod": True, "fss": True, "mae": False}
#: the reference every candidate is scored beside (a network below it is worth less than no network)
BASELINE = "optical_flow"
#: the decision's ``reason`` when every case of the window lay in the candidate's training data
OVERLAPS_TRAINING = "window overlaps training data"
#: how often a promotion that lost the race scores again before it stops
MAX_RESCORES = 3
#: how long a promotion waits for another one's decision (seconds)
LOCK_WAIT_S = 600.0


@dataclass(frozen=True)
class PromotionRule:
    """Compare the mean over leads of ``metric`` (csi, pod, fss or mae; threshold for csi/pod)
    on the archive's last ``window_hours``."""

    metric: str = "csi"
    threshold: float = 1.0
    min_improvement: float = 0.0
    window_hours: float = 6.0
    #: refuse a candidate that does not beat optical flow on the same cases (else it is only said)
    must_beat_baseline: bool = False

    @classmethod
    def from_yaml(cls, path: str | Path) -> PromotionRule:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        section = data.get("promotion", data)
        unknown = set(section) - {"metric", "threshold", "min_improvement", "window_hours", "must_beat_baseline"}
        if unknown:
            raise ValueError(f"{path}: unknown promotion keys {sorted(unknown)}")
        rule = cls(**section)
        rule.score([])  # validates the metric
        return rule

    def score(self, leads: list[dict]) -> float | None:
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"promotion metric must be one of {sorted(HIGHER_IS_BETTER)}, got {self.metric!r}")
        if self.metric == "mae":
            values = [lead["mae_mm_h"] for lead in leads]
        elif self.metric == "fss":
            values = [lead["fss_1mm_10km"] for lead in leads]
        else:
            values = [lead[self.metric].get(f"{self.threshold:g}", lead[self.metric].get(str(self.threshold)))
                      for lead in leads]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def better(self, candidate: float, production: float) -> bool:
        if HIGHER_IS_BETTER[self.metric]:
            return candidate > production + self.min_improvement
        return candidate < production - self.min_improvement


@dataclass(frozen=True)
class TrainingFrames:
    """The frames of one product a checkpoint was trained or validated on, from the training data
    its checkpoint records (``RadarDataModule.describe``): those in its time range, before any
    held-out tail, whose split block was 'train' or 'val'."""

    product: str
    first: np.datetime64 | None  # None: the checkpoint never read this product
    last: np.datetime64 | None
    splitter: Any  # TimeBlockSplit or MonthSplit; None: every frame of the range counts as seen
    summary: dict[str, Any]

    @classmethod
    def from_data(cls, data: dict[str, Any] | None, product: str) -> TrainingFrames | None:
        """None when the checkpoint does not say what it was trained on."""
        from pipelines.dataset import MonthSplit, TimeBlockSplit

        if not data or "products" not in data:
            return None
        summary = {"products": data.get("products"), "time_ranges": data.get("time_ranges"),
                   "split": data.get("split"), "holdout_hours": data.get("holdout_hours")}
        span = (data.get("time_ranges") or {}).get(product)
        if product not in data["products"] or not span:
            return cls(product, None, None, None, summary)
        first, last = (np.datetime64(str(t).rstrip("Z"), "s") for t in span)
        last = last - np.timedelta64(int(round(float(data.get("holdout_hours") or 0) * 3600)), "s")
        split = data.get("split") or {}
        pattern = tuple(split.get("pattern") or TimeBlockSplit().pattern)
        splitter = (MonthSplit.parse(split["months"], split.get("other_months", "train")) if "months" in split
                    else TimeBlockSplit(float(split["block_hours"]), pattern) if "block_hours" in split else None)
        return cls(product, first, last, splitter, summary)

    def unseen(self, times: np.ndarray) -> bool:
        """True when none of these frames was a training or validation frame."""
        if self.first is None:
            return True
        times = np.asarray(times).astype("datetime64[s]")
        inside = (times >= self.first) & (times <= self.last)
        if not inside.any():
            return True
        if self.splitter is None:
            return False
        splits = self.splitter.split_of(times[inside].astype(np.int64))
        return not np.isin(splits, ("train", "val")).any()


def promote(
    model_store: ModelStore, checkpoint: str | Path, store: str, product: str,
    rule: PromotionRule | None = None, crop: int | None = None, report_dir: str | Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Add ``checkpoint`` to the model store, verify it against production and optical flow on the
    cases of the latest window it never saw; maybe promote."""
    from nowcast.evaluate import evaluate
    from pipelines.store import ProductArchive

    rule = rule or PromotionRule()
    window_hours = rule.window_hours
    with model_store.lock(PROMOTE_LOCK, wait=LOCK_WAIT_S):
        settle_interrupted(model_store)
    version = model_store.register(checkpoint)
    current = model_store.production()
    times = ProductArchive(store, product).times()
    end = times[-1].astype("datetime64[s]")
    start = end - np.timedelta64(int(window_hours * 3600), "s")
    seen = TrainingFrames.from_data(model_store.meta(version).get("training_data"), product)
    out = Path(report_dir or model_store.versions / version) / "promotion_report.json"
    rescored: list[str | None] = []
    while True:
        candidates = [str(model_store.checkpoint(version))]
        if current:
            candidates.append(str(model_store.checkpoint(current)))
        candidates.append(BASELINE)  # on the same cases: the bar a network must clear to be worth serving
        report = evaluate(store, product, candidates, out, start=str(start), end=str(end), crop=crop,
                          keep_case=seen.unseen if seen is not None else None)
        scores = list(report["models"].values())
        candidate_score = rule.score(scores[0]["scores"])
        production_score = rule.score(scores[1]["scores"]) if current else None
        baseline_score = rule.score(scores[-1]["scores"])
        decision = {
            "candidate": version, "production_before": current, "window": [utc_text(start), utc_text(end)],
            "cases": report["n_cases"], "metric": rule.metric, "threshold": rule.threshold,
            "min_improvement": rule.min_improvement, "candidate_score": candidate_score,
            "production_score": production_score, "baseline": BASELINE, "baseline_score": baseline_score,
            "held_out": ({"cases_seen_in_training_excluded": report.get("n_cases_excluded", 0),
                          "candidate_training_data": seen.summary} if seen is not None else
                         {"unknown": "the candidate's checkpoint does not record its training data"}),
            "report": str(out),
        }
        if rescored:
            decision["rescored_against"] = rescored
        with model_store.lock(PROMOTE_LOCK, wait=LOCK_WAIT_S):
            found = model_store.production()
            if found != current:  # another promotion moved the pointer while this one scored
                rescored.append(found)
                if len(rescored) > MAX_RESCORES:
                    decision["promoted"], decision["reason"] = False, (
                        f"production changed {len(rescored)} times while scoring (now {found}); stopped")
                    decision["explanation"] = decision["reason"]
                    _record(model_store, version, scores[0]["scores"], decision)
                    return FAILED, decision
                current = found
                continue  # score again against the new production, outside the lock
            code = _decide(rule, decision, report["n_cases"], current, candidate_score, production_score,
                           baseline_score, report.get("n_cases_excluded", 0))
            if rescored:  # it lost a race: say so beside the decision
                decision["explanation"] += (
                    f" (production moved to {' then '.join(map(str, rescored))} while this candidate was scored; "
                    "it was scored again against it)")
            # the decision is recorded before the pointer moves: a kill after the move leaves it
            # recorded (confirmed by the next promotion), a kill before leaves it marked unmoved
            if code != PROMOTED:
                _record(model_store, version, scores[0]["scores"], decision)
                return code, decision
            decision["pointer_moved"] = False
            _record(model_store, version, scores[0]["scores"], decision)
            try:
                model_store.set_production(version, expected=current)
            except ProductionChanged:  # only a writer outside the lock can get here
                decision.pop("pointer_moved")
                decision["promoted"], decision["reason"] = False, "production changed under the lock"
                decision["explanation"] = decision["reason"]
                _record(model_store, version, scores[0]["scores"], decision)
                return FAILED, decision
            decision["pointer_moved"] = True
            _record(model_store, version, scores[0]["scores"], decision)
            return code, decision


def _beats(rule: PromotionRule, a: float, b: float) -> bool:
    return a > b if HIGHER_IS_BETTER[rule.metric] else a < b


def _decide(rule: PromotionRule, decision: dict[str, Any], n_cases: int, current: str | None,
            candidate_score: float | None, production_score: float | None, baseline_score: float | None = None,
            excluded: int = 0) -> int:
    """Fill in ``promoted``, ``reason`` (a short code) and ``explanation`` (why, in words); the exit code."""
    metric = rule.metric + (f" at {rule.threshold:g} mm/h" if rule.metric in ("csi", "pod") else "")
    window = " .. ".join(decision["window"])
    if n_cases == 0 and excluded:
        data = decision["held_out"]["candidate_training_data"]
        decision["promoted"], decision["reason"] = False, OVERLAPS_TRAINING
        decision["explanation"] = (
            f"refused: all {excluded} cases of the window {window} use frames the candidate was trained or "
            f"validated on (training data {json.dumps(data['time_ranges'])}, split {json.dumps(data['split'])}); "
            "scores there say nothing about new weather. Verify on frames after its training data (ingest newer "
            "data) or in its test blocks (--window-hours).")
        return FAILED
    if n_cases == 0 or candidate_score is None:
        decision["promoted"], decision["reason"] = False, "no wet verification case in the window"
        decision["explanation"] = f"refused: no wet case the candidate never saw in {window}"
        return FAILED
    held = f"{n_cases} held-out cases" + (f" ({excluded} seen in training left out)" if excluded else "")
    below = baseline_score is not None and not _beats(rule, candidate_score, baseline_score)
    note = ""
    if below:
        note = (f"; the candidate is below {BASELINE} ({baseline_score:.3f}) on the same cases"
                + (", and so is production" if production_score is not None
                   and not _beats(rule, production_score, baseline_score) else ""))
    if rule.must_beat_baseline and below:
        decision["promoted"], decision["reason"] = False, f"not better than {BASELINE}"
        decision["explanation"] = (f"kept: candidate {metric} {candidate_score:.3f} does not beat {BASELINE} "
                                   f"{baseline_score:.3f} on {held} (rule must_beat_baseline)")
        return KEPT_PRODUCTION
    if current is None or production_score is None or rule.better(candidate_score, production_score):
        decision["promoted"], decision["reason"] = True, "no production model" if current is None else "better"
        decision["explanation"] = (
            f"promoted: no production model; candidate {metric} {candidate_score:.3f} on {held}" if current is None
            else f"promoted: candidate {metric} {candidate_score:.3f} beats production {production_score:.3f} "
                 f"by more than {rule.min_improvement:g} on {held}") + note
        return PROMOTED
    decision["promoted"], decision["reason"] = False, "not better than production"
    decision["explanation"] = (f"kept production: candidate {metric} {candidate_score:.3f} against production "
                               f"{production_score:.3f} (needs more than {rule.min_improvement:g} better) on "
                               f"{held}") + note
    return KEPT_PRODUCTION


def _record(model_store: ModelStore, version: str, scores: Any, decision: dict[str, Any]) -> None:
    meta = model_store.meta(version)
    meta["scores"] = scores
    meta["promotion"] = dict(decision)
    model_store.write_meta(version, meta)


def settle_interrupted(model_store: ModelStore) -> list[str]:
    """After a kill mid-promotion: a decision recorded with ``pointer_moved: false`` is confirmed
    when its version did become production, else marked not promoted; leftover temporary files
    are removed. Call it holding the promotion lock. Returns what it did, one line each."""
    done = [f"removed {path}" for path in model_store.clean_leftovers()]
    production = model_store.production()
    for version in model_store.list():
        try:
            meta = model_store.meta(version)
        except (OSError, ValueError):
            continue
        decision = meta.get("promotion") or {}
        if decision.get("pointer_moved") is not False:
            continue
        if version == production:
            decision["pointer_moved"] = True
            done.append(f"{version}: promotion confirmed (the pointer had moved)")
        else:
            decision.pop("pointer_moved")
            decision["promoted"], decision["reason"] = False, "interrupted before the production pointer moved"
            done.append(f"{version}: interrupted promotion marked not promoted")
        meta["promotion"] = decision
        model_store.write_meta(version, meta)
    return done
