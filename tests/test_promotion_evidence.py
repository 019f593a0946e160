"""Promotion on evidence (issue: numbers a user can trust, item 2): the candidate is verified only on
cases it never saw in training or validation (a window inside its training data is refused, and
says so), beside production and optical flow on the same cases, and the decision says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from conftest import nowcast_cli
from test_model_store import dry_model

from nowcast.model_store import ModelStore
from nowcast.promotion import FAILED, KEPT_PRODUCTION, OVERLAPS_TRAINING, PROMOTED, TrainingFrames


def promote(registry: Path, checkpoint: Path, store: str, product: str, rule: Path | None = None,
            window_hours: str = "1", crop: str | None = "256") -> tuple[int, dict, str]:
    args = ["promote", "--checkpoint", str(checkpoint), "--registry", str(registry), "--store", store,
            "--product", product, "--window-hours", window_hours, *(["--crop", crop] if crop else [])]
    result = nowcast_cli(*args, *(["--rule", str(rule)] if rule else []))
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}, result.stderr


def test_a_window_inside_the_training_data_is_refused_and_says_so(small_checkpoint: Path, tmp_path: Path) -> None:
    data = torch.load(small_checkpoint, map_location="cpu", weights_only=False)["nowcast"]["data"]
    assert data["split"] == {"block_hours": 1, "pattern": ["train", "val"]}  # the run records its split
    code, decision, stderr = promote(tmp_path / "registry", small_checkpoint, data["store"], "synth",
                                     window_hours="3", crop=None)
    assert code == FAILED and decision["reason"] == OVERLAPS_TRAINING and decision["promoted"] is False
    assert decision["cases"] == 0 and decision["held_out"]["cases_seen_in_training_excluded"] > 0
    assert "trained or validated on" in decision["explanation"] and "refused" in stderr
    assert ModelStore(tmp_path / "registry").production() is None


def test_the_decision_names_optical_flow_on_the_same_cases(
    fmi_archive: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    dry = dry_model(small_checkpoint, tmp_path / "dry.ckpt")  # no rain at all: far below optical flow
    code, decision, stderr = promote(tmp_path / "registry", dry, fmi_archive, "fmi")
    assert code == PROMOTED and decision["reason"] == "no production model" and decision["cases"] > 0
    assert decision["baseline"] == "optical_flow" and decision["baseline_score"] > decision["candidate_score"] == 0
    assert "below optical_flow" in decision["explanation"] and "below optical_flow" in stderr
    assert decision["held_out"]["cases_seen_in_training_excluded"] == 0  # trained on synth, verified on fmi
    report = json.loads(Path(decision["report"]).read_text())
    assert "optical_flow" in report["models"] and len(report["models"]) == 2  # candidate and the baseline


def test_a_rule_can_require_beating_optical_flow(fmi_archive: str, small_checkpoint: Path, tmp_path: Path) -> None:
    rule = tmp_path / "rule.yaml"
    rule.write_text(yaml.safe_dump({"promotion": {"metric": "csi", "threshold": 1.0, "must_beat_baseline": True}}))
    dry = dry_model(small_checkpoint, tmp_path / "dry.ckpt")
    code, decision, _ = promote(tmp_path / "registry", dry, fmi_archive, "fmi", rule=rule)
    assert code == KEPT_PRODUCTION and decision["reason"] == "not better than optical_flow"
    assert ModelStore(tmp_path / "registry").production() is None


def test_only_frames_of_train_and_val_blocks_in_the_training_range_count_as_seen() -> None:
    data = {"products": ["fmi"], "time_ranges": {"fmi": ["2021-07-01T00:00:00Z", "2021-07-01T05:59:00Z"]},
            "split": {"block_hours": 1, "pattern": ["train", "val", "test"]}, "holdout_hours": 1.0}
    seen = TrainingFrames.from_data(data, "fmi")
    hour = np.datetime64("2021-07-01T00:00", "s")
    block = {int((hour + np.timedelta64(h, "h")).astype("datetime64[h]").astype(np.int64)) % 3: h for h in range(3)}
    test_hour = hour + np.timedelta64(block[2], "h")
    train_hour = hour + np.timedelta64(block[0], "h")
    assert seen.unseen(np.array([test_hour, test_hour + np.timedelta64(55, "m")]))
    assert not seen.unseen(np.array([train_hour + np.timedelta64(50, "m"), train_hour + np.timedelta64(65, "m")]))
    assert seen.unseen(np.array([hour + np.timedelta64(5, "h") + np.timedelta64(m, "m") for m in (0, 30)]))  # held out
    assert TrainingFrames.from_data(data, "mch").unseen(np.array([train_hour]))  # another product
    assert TrainingFrames.from_data(None, "fmi") is None  # unknown: the decision says so
