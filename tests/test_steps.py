"""``steps`` (pysteps STEPS) on real radar: members, exceedance probabilities, the ensemble mean, and
``nowcast evaluate`` scoring it probabilistically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_files

from nowcast.forecaster import load_forecaster
from nowcast.models import BASELINES, MODELS, get_model
from pipelines.store import ProductArchive

#: a real 64 x 64 FMI window with rain and the edge of the radar's coverage (nodata) in it
ROWS, COLS = slice(320, 384), slice(624, 688)
THRESHOLDS = [0.5, 1.0, 5.0, 10.0]


@pytest.fixture(scope="module")
def fmi_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipelines.ingest import ingest

    store = str(tmp_path_factory.mktemp("steps") / "fmi.zarr")
    ingest(sample_files("fmi", 7), store, "fmi", fmt="fmi_pgm", workers=1)
    return store


@pytest.fixture(scope="module")
def frames(fmi_store: str) -> np.ndarray:
    with ProductArchive(fmi_store, "fmi").open() as ds:
        window = ds["precip"].isel(time=slice(0, 4), y=ROWS, x=COLS).values
    assert np.isnan(window[-1]).mean() > 0.05 and np.nanmean(window[-1] >= 1.0) > 0.05, "pick a wet edge crop"
    return window


def test_steps_is_a_registered_baseline() -> None:
    assert "steps" in MODELS and "steps" in BASELINES
    forecaster = load_forecaster("steps")
    assert forecaster.outputs == ["deterministic", "probability", "ensemble"] and not forecaster.trainable
    assert load_forecaster("sprog").outputs == ["deterministic"]
    assert get_model("steps").members == 20  # the default member count


def test_members_are_finite_non_negative_and_nodata_stays_nodata(frames: np.ndarray) -> None:
    members = load_forecaster("steps").predict_ensemble(frames, 3, members=5)
    assert members.shape == (5, 3, 64, 64) and members.dtype == np.float32
    nodata = np.isnan(frames[-1])
    assert np.isnan(members[..., nodata]).all()
    valid = members[..., ~nodata]
    assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() > 1.0
    assert not np.allclose(members[0], members[1])
    # seeded: a fresh model gives the same members for the same frames
    np.testing.assert_array_equal(load_forecaster("steps").predict_ensemble(frames, 3, members=5), members)


def test_probabilities_lie_in_0_1_and_fall_with_the_threshold(frames: np.ndarray) -> None:
    forecaster = load_forecaster("steps")
    p = forecaster.predict_probabilities(frames, 3, THRESHOLDS, members=8)
    assert p.shape == (3, len(THRESHOLDS), 64, 64)
    nodata = np.isnan(frames[-1])
    assert np.isnan(p[:, :, nodata]).all()
    valid = p[:, :, ~nodata]
    assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1
    assert (np.diff(valid, axis=1) <= 0).all()
    assert valid[0, 0].max() == 1.0 and 0 < valid[0, 0].mean() < 1  # certain somewhere, not everywhere
    # the fraction of members at or above each threshold, exactly
    members = forecaster.predict_ensemble(frames, 3, members=8)
    np.testing.assert_allclose(p[:, 1, ~nodata], (members[:, :, ~nodata] >= 1.0).mean(axis=0))


def test_the_deterministic_forecast_is_the_ensemble_mean(frames: np.ndarray) -> None:
    forecaster = load_forecaster("steps")
    mean = forecaster.predict(frames, 2)
    members = forecaster.predict_ensemble(frames, 2)  # the default 20
    assert members.shape[0] == 20
    np.testing.assert_allclose(mean, members.mean(axis=0), atol=1e-4, equal_nan=True)


def test_a_dry_field_forecasts_dry() -> None:
    members = load_forecaster("steps").predict_ensemble(np.zeros((3, 32, 32), np.float32), 2, members=3)
    assert members.shape == (3, 2, 32, 32) and not members.any()


def test_evaluate_scores_steps_probabilistically(fmi_store: str, tmp_path: Path) -> None:
    from nowcast.evaluate import evaluate

    report = evaluate(fmi_store, "fmi", ["persistence", "steps"], tmp_path / "report.json", crop=64, lead_steps=2,
                      members=4)
    assert report["n_cases"] >= 1
    steps, persistence = report["models"]["steps"], report["models"]["persistence"]
    assert steps["outputs"] == ["deterministic", "probability", "ensemble"]
    row = steps["probabilistic"][0]
    assert row["crps"] is not None and row["crps"] >= 0
    for key in ("1.0", "5.0", "10.0"):
        assert 0 <= row["brier"][key] <= 1
        assert {"forecast_probability", "observed_frequency", "count"} <= set(row["reliability_diagram"][key])
    assert row["roc_area"]["1.0"] is not None and 0 <= row["roc_area"]["1.0"] <= 1
    # a deterministic model's CRPS is its MAE; it has no probabilities to score
    for det, prob in zip(persistence["scores"], persistence["probabilistic"], strict=True):
        assert prob["crps"] == det["mae_mm_h"] and "brier" not in prob
    assert Path(report["files"]["reliability_png"]).stat().st_size > 1000
    assert "CRPS" in Path(report["files"]["markdown"]).read_text()
    assert json.loads((tmp_path / "report.json").read_text())["models"]["steps"]["probabilistic"][0]["crps"] == \
        row["crps"]


def test_the_pysteps_plugin_exposes_the_ensemble(frames: np.ndarray) -> None:
    import pysteps.nowcasts

    from nowcast.pysteps_plugin import register

    assert "nowcast_steps" in register()
    method = pysteps.nowcasts.get_method("nowcast_steps")
    members = method(frames, None, 2, n_ens_members=3)
    assert members.shape == (3, 2, 64, 64)
    np.testing.assert_array_equal(members, load_forecaster("steps").predict_ensemble(frames, 2, 3))
    assert method(frames, None, 2).shape == (2, 64, 64)  # without n_ens_members: the ensemble mean
