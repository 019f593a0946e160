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
