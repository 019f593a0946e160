"""Model registry: versions with their checkpoint, data range and scores, and a production pointer.

    registry/
      versions/<version>/model.ckpt   the checkpoint (a copy, so runs/ can be cleaned)
      versions/<version>/meta.json    model, created, training data, verification scores
      production                      the production version's name (replaced atomically)
      train.lock                      held by a running ``nowcast train``

``promote`` verifies a candidate and the production model on the same most recent window of
the archive and moves the pointer only when the candidate wins by the configured rule.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: exit codes a scheduler can act on
PROMOTED, KEPT_PRODUCTION, FAILED, LOCKED = 0, 3, 2, 75
HIGHER_IS_BETTER = {"csi": True, "pod": True, "fss": True, "mae": False}


class RegistryLocked(RuntimeError):
    """Another process holds the lock."""


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


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"

    def production(self) -> str | None:
        pointer = self.root / "production"
        return pointer.read_text().strip() if pointer.is_file() else None

    def checkpoint(self, version: str) -> Path:
        path = self.versions / version / "model.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"registry {self.root} has no version {version!r}")
        return path

    def production_checkpoint(self) -> Path | None:
        version = self.production()
        return self.checkpoint(version) if version else None

    def meta(self, version: str) -> dict[str, Any]:
        return json.loads((self.versions / version / "meta.json").read_text())

    def list(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if (p / "meta.json").is_file())

    def register(self, checkpoint: str | Path) -> str:
        """Copy a checkpoint in as a new version; returns its name."""
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        info = state.get("nowcast")
        if info is None:
            raise ValueError(f"{checkpoint} is not a nowcast checkpoint")
        created = datetime.now(timezone.utc)
        version = f"{created:%Y%m%dT%H%M%S%f}-{info['model']}"
        target = self.versions / version
        target.mkdir(parents=True)
        _atomic_copy(Path(checkpoint), target / "model.ckpt")
        self.write_meta(version, {"version": version, "model": info["model"], "created": created.isoformat(),
                                  "source": str(checkpoint), "training_data": info.get("data"),
                                  "config": {"model": state.get("hyper_parameters"),
                                             "data": state.get("datamodule_hyper_parameters")},
                                  "scores": None})
        return version

    def write_meta(self, version: str, meta: dict[str, Any]) -> None:
        _atomic_write(self.versions / version / "meta.json", json.dumps(meta, indent=2, default=str).encode())

    def set_production(self, version: str) -> None:
        self.checkpoint(version)  # must exist
        _atomic_write(self.root / "production", f"{version}\n".encode())

    @contextmanager
    def lock(self, name: str = "train.lock") -> Iterator[None]:
        """An exclusive, non-blocking lock (released by the OS if the holder dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RegistryLocked(f"another run holds {self.root / name}") from exc
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        f.write(data)
        temporary = f.name
    os.replace(temporary, path)


def _atomic_copy(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def promote(
    registry: ModelRegistry, checkpoint: str | Path, store: str, product: str,
    rule: PromotionRule | None = None, crop: int | None = None, report_dir: str | Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Register ``checkpoint``, verify it against production on the latest window; maybe promote."""
    from nowcast.evaluate import evaluate
    from pipelines.store import ProductArchive

    rule = rule or PromotionRule()
    window_hours = rule.window_hours
    version = registry.register(checkpoint)
    current = registry.production()
    times = ProductArchive(store, product).times()
    end = times[-1].astype("datetime64[s]")
    start = end - np.timedelta64(int(window_hours * 3600), "s")
    models = [str(registry.checkpoint(version))]
    if current:
        models.append(str(registry.checkpoint(current)))
    out = Path(report_dir or registry.versions / version) / "promotion_report.json"
    report = evaluate(store, product, models, out, start=str(start), end=str(end), crop=crop)
    scores = list(report["models"].values())
    candidate_score = rule.score(scores[0]["scores"])
    production_score = rule.score(scores[1]["scores"]) if current else None
    decision = {
        "candidate": version, "production_before": current, "window": [str(start) + "Z", str(end) + "Z"],
        "cases": report["n_cases"], "metric": rule.metric, "threshold": rule.threshold,
        "min_improvement": rule.min_improvement, "candidate_score": candidate_score,
        "production_score": production_score, "report": str(out),
    }
    if report["n_cases"] == 0 or candidate_score is None:
        decision["promoted"], decision["reason"] = False, "no wet verification case in the window"
        code = FAILED
    elif current is None or production_score is None or rule.better(candidate_score, production_score):
        registry.set_production(version)
        decision["promoted"], decision["reason"] = True, "no production model" if current is None else "better"
        code = PROMOTED
    else:
        decision["promoted"], decision["reason"] = False, "not better than production"
        code = KEPT_PRODUCTION
    meta = registry.meta(version)
    meta["scores"] = scores[0]["scores"]
    meta["promotion"] = decision
    registry.write_meta(version, meta)
    return code, decision
