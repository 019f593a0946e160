"""Promotion: verify a candidate and the production model on the archive's latest window, and
make the candidate production only when it wins by the configured rule (``configs/promotion.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.model_store import ModelStore
from pipelines.query import utc_text

#: exit codes a scheduler can act on
PROMOTED, KEPT_PRODUCTION, FAILED = 0, 3, 2
HIGHER_IS_BETTER = {"csi": True, "pod": True, "fss": True, "mae": False}


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
    version = model_store.register(checkpoint)
    current = model_store.production()
    times = ProductArchive(store, product).times()
    end = times[-1].astype("datetime64[s]")
    start = end - np.timedelta64(int(window_hours * 3600), "s")
    candidates = [str(model_store.checkpoint(version))]
    if current:
        candidates.append(str(model_store.checkpoint(current)))
    out = Path(report_dir or model_store.versions / version) / "promotion_report.json"
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
    if report["n_cases"] == 0 or candidate_score is None:
        decision["promoted"], decision["reason"] = False, "no wet verification case in the window"
        code = FAILED
    elif current is None or production_score is None or rule.better(candidate_score, production_score):
        model_store.set_production(version)
        decision["promoted"], decision["reason"] = True, "no production model" if current is None else "better"
        code = PROMOTED
    else:
        decision["promoted"], decision["reason"] = False, "not better than production"
        code = KEPT_PRODUCTION
    meta = model_store.meta(version)
    meta["scores"] = scores[0]["scores"]
    meta["promotion"] = decision
    model_store.write_meta(version, meta)
    return code, decision
