"""Promotion: verify a candidate and the production model on the archive's latest window, and
make the candidate production only when it wins by the configured rule (``configs/promotion.yaml``).

Two promotions at once must not install the worse model: scoring runs unlocked (it is the slow
part), then the decision is taken under the model store's promotion lock and the pointer moves
by compare-and-swap against the production version the candidate was scored against. One that
lost the race (production moved meanwhile) scores again against the new production, and says so
in its decision (``rescored_against``). The decision is written into the candidate's metadata
before the pointer moves (``pointer_moved: false``), then confirmed; a kill in between is
settled by the next promotion (``settle_interrupted``), which also removes leftover temporary files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.model_store import PROMOTE_LOCK, ModelStore, ProductionChanged
from pipelines.query import utc_text

#: exit codes a scheduler can act on
PROMOTED, KEPT_PRODUCTION, FAILED = 0, 3, 2
HIGHER_IS_BETTER = {"csi": True, "pod": True, "fss": True, "mae": False}
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

    @classmethod
    def from_yaml(cls, path: str | Path) -> PromotionRule:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        section = data.get("promotion", data)
        unknown = set(section) - {"metric", "threshold", "min_improvement", "window_hours"}
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


def promote(
    model_store: ModelStore, checkpoint: str | Path, store: str, product: str,
    rule: PromotionRule | None = None, crop: int | None = None, report_dir: str | Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Add ``checkpoint`` to the model store, verify it against production on the latest window; maybe promote."""
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
    out = Path(report_dir or model_store.versions / version) / "promotion_report.json"
    rescored: list[str | None] = []
    while True:
        candidates = [str(model_store.checkpoint(version))]
        if current:
            candidates.append(str(model_store.checkpoint(current)))
        report = evaluate(store, product, candidates, out, start=str(start), end=str(end), crop=crop)
        scores = list(report["models"].values())
        candidate_score = rule.score(scores[0]["scores"])
        production_score = rule.score(scores[1]["scores"]) if current else None
        decision = {
            "candidate": version, "production_before": current, "window": [utc_text(start), utc_text(end)],
            "cases": report["n_cases"], "metric": rule.metric, "threshold": rule.threshold,
            "min_improvement": rule.min_improvement, "candidate_score": candidate_score,
            "production_score": production_score, "report": str(out),
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
                    _record(model_store, version, scores[0]["scores"], decision)
                    return FAILED, decision
                current = found
                continue  # score again against the new production, outside the lock
            code = _decide(rule, decision, report["n_cases"], current, candidate_score, production_score)
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
                _record(model_store, version, scores[0]["scores"], decision)
                return FAILED, decision
            decision["pointer_moved"] = True
            _record(model_store, version, scores[0]["scores"], decision)
            return code, decision


def _decide(rule: PromotionRule, decision: dict[str, Any], n_cases: int, current: str | None,
            candidate_score: float | None, production_score: float | None) -> int:
    """Fill in ``promoted`` and ``reason``; the exit code."""
    if n_cases == 0 or candidate_score is None:
        decision["promoted"], decision["reason"] = False, "no wet verification case in the window"
        return FAILED
    if current is None or production_score is None or rule.better(candidate_score, production_score):
        decision["promoted"], decision["reason"] = True, "no production model" if current is None else "better"
        return PROMOTED
    decision["promoted"], decision["reason"] = False, "not better than production"
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
