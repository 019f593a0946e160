"""``nowcast backfill --threshold``: exceedance probabilities stored beside the forecast, on real radar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import nowcast_cli, sample_files

from nowcast.backfill import backfill, open_forecasts
from pipelines.frame import Frame
from pipelines.grid import Grid
from pipelines.store import ProductArchive

#: a real 64 x 64 FMI window with rain and the edge of the radar's coverage (nodata) in it
ROWS, COLS = slice(320, 384), slice(624, 688)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six real FMI frames (14:45 .. 15:10 UTC), cropped to the window, as a product of their own."""
    from pipelines.ingest import ingest

    tmp = tmp_path_factory.mktemp("prob-backfill")
    full = str(tmp / "full.zarr")
    ingest(sample_files("fmi", 6), full, "fmi", fmt="fmi_pgm", workers=2)
    archive = ProductArchive(full, "fmi")
    grid = archive.grid()
    crop = Grid(grid.crs_proj, grid.x[COLS], grid.y[ROWS])
    with archive.open() as ds:
        rain, times = ds["precip"].isel(y=ROWS, x=COLS).values, ds["time"].values
    store = str(tmp / "small.zarr")
    ProductArchive(store, "fmi").write([
        Frame(time=t, rain_rate=r.astype(np.float32), grid=crop, attrs={"source_product": "fmi crop"},
              source=f"fmi-crop:{k}") for k, (t, r) in enumerate(zip(times, rain, strict=True))])
    return store


def test_backfill_stores_exceedance_probabilities(small_store: str, tmp_path: Path) -> None:
    out = str(tmp_path / "steps.zarr")
    summary = backfill("steps", small_store, "fmi", "2016-09-28T14:55:00Z", "2016-09-28T15:00:00Z", out,
                       lead_steps=2, workers=1, batch=2, verify=False, thresholds=[1, 5], members=3)
    assert summary["written"] == 2 and summary["thresholds"] == [1.0, 5.0]
    with ProductArchive(small_store, "fmi").open() as ds:
        last = ds["precip"].sel(time=np.datetime64("2016-09-28T14:55")).values
    with open_forecasts(out) as ds:
        p = ds["probability"]
        assert p.dims == ("init_time", "lead_time", "threshold", "y", "x") and p.shape == (2, 2, 2, 64, 64)
        assert ds["threshold"].values.tolist() == [1.0, 5.0] and ds["threshold"].attrs["units"] == "mm/h"
        assert p.attrs["units"] == "1"
        values = p.values[0]
        nodata = np.isnan(last)
        assert nodata.any() and np.isnan(values[..., nodata]).all()
        valid = values[..., ~nodata]
        assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1 and valid.max() > 0
        assert (valid[:, 1] <= valid[:, 0] + 1e-4).all()  # 5 mm/h never more likely than 1 mm/h
        # 3 members: the stored probabilities are thirds
        np.testing.assert_allclose(valid * 3, np.round(valid * 3), atol=1e-3)
        precip = ds["precip"].values[0]
        assert np.isnan(precip[:, nodata]).all() and np.isfinite(precip[:, ~nodata]).all()
    # resumable: the same thresholds skip what is done, others are refused
    again = backfill("steps", small_store, "fmi", "2016-09-28T14:55:00Z", "2016-09-28T15:00:00Z", out,
                     lead_steps=2, workers=1, verify=False, thresholds=[1, 5], members=3)
    assert again["written"] == 0
    with pytest.raises(ValueError, match="thresholds"):
        backfill("steps", small_store, "fmi", "2016-09-28T14:55:00Z", "2016-09-28T15:00:00Z", out,
                 lead_steps=2, workers=1, verify=False, thresholds=[2])


def test_a_model_without_probabilities_is_refused_by_the_cli(small_store: str, tmp_path: Path) -> None:
    result = nowcast_cli("backfill", "--store", small_store, "--product", "fmi", "--model", "persistence",
                         "--start", "2016-09-28T14:55:00Z", "--end", "2016-09-28T15:00:00Z",
                         "--out", str(tmp_path / "p.zarr"), "--threshold", "1", "--no-verify")
    assert result.returncode != 0 and "no probabilities" in result.stdout + result.stderr


def test_stored_probabilities_are_scored_by_evaluate_and_the_ledger(small_store: str, tmp_path: Path) -> None:
    """``nowcast evaluate --forecasts`` scores a store's probabilities as ``nowcast evaluate`` scores a
    probabilistic model (Brier score and ROC area per lead and stored threshold), and the backfill's own
    verification records the same in the ledger (GET /v1/skill's rows)."""
    import json
    import shutil

    from nowcast.live_verification import VerificationLedger

    store = str(tmp_path / "archive.zarr")
    shutil.copytree(small_store, store)  # the backfill registers with (and writes) the archive's ledger
    out = str(tmp_path / "steps.zarr")
    summary = backfill("steps", store, "fmi", "2016-09-28T14:55:00Z", "2016-09-28T15:00:00Z", out, lead_steps=2,
                       workers=1, batch=2, thresholds=[1, 5], members=3)
    assert summary["verification"]["scored"] == 4  # two init times, each its forecast and its probabilities
    report_path = tmp_path / "stored.json"
    result = nowcast_cli("evaluate", "--store", store, "--product", "fmi", "--forecasts", out,
                         "--out", str(report_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["cases"] == ["2016-09-28T14:55:00Z", "2016-09-28T15:00:00Z"]
    assert report["forecasts"]["steps"]["thresholds"] == [1.0, 5.0]
    entry = report["models"]["steps"]
    assert entry["outputs"] == ["deterministic", "probability"]
    rows = entry["probabilistic"]
    assert [row["lead_minutes"] for row in rows] == [5.0, 10.0]

    # the Brier score by hand: (p - o)^2 over the pixels valid on both sides, pooled over the two cases
    with ProductArchive(store, "fmi").open() as ds:
        observed = {np.datetime64(t, "s"): frame for t, frame in zip(ds["time"].values, ds["precip"].values,
                                                                     strict=True)}
    with open_forecasts(out) as ds:
        stored = {np.datetime64(t, "s"): ds["probability"].sel(init_time=t).values for t in ds["init_time"].values}
    for lead, row in enumerate(rows):
        assert row["n_cases"] == 2 and row["crps"] is None  # a store keeps probabilities, not members
        assert list(row["brier"]) == list(row["roc_area"]) == ["1.0", "5.0"]
        for k, threshold in enumerate((1.0, 5.0)):
            total, count = 0.0, 0
            for init in (np.datetime64("2016-09-28T14:55", "s"), np.datetime64("2016-09-28T15:00", "s")):
                obs = observed[init + np.timedelta64(5 * (lead + 1), "m")]
                p = stored[init][lead, k]
                valid = np.isfinite(obs) & np.isfinite(p)
                total += float(np.sum((p[valid] - (obs[valid] >= threshold)) ** 2))
                count += int(valid.sum())
            assert row["brier"][f"{threshold}"] == pytest.approx(total / count, rel=1e-9)
        assert 0.5 < row["roc_area"]["1.0"] <= 1.0  # STEPS tells rain at 1 mm/h from dry better than chance
    markdown = Path(report["files"]["markdown"]).read_text()
    assert "## Probabilistic scores" in markdown and "BS ≥5" in markdown and "BS ≥10" not in markdown
    assert Path(report["files"]["reliability_png"]).is_file()

    # the ledger scored the same cases from the store: the same Brier score and ROC area per lead
    live = VerificationLedger(store, "fmi").rolling(24)["models"]
    assert [m["model"] for m in live] == ["steps"] and live[0]["n_probabilistic_cases"] == 2
    for mine, theirs in zip(live[0]["scores"], rows, strict=True):
        assert mine["n_probabilistic_cases"] == 2
        for key in ("1.0", "5.0"):
            assert mine["brier"][key] == pytest.approx(theirs["brier"][key], rel=1e-9)
            assert mine["roc_area"][key] == pytest.approx(theirs["roc_area"][key], rel=1e-9)
