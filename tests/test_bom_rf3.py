"""BoM Rainfields3: no sample files ship, so a file in the documented layout is generated."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from pipelines.importers import detect_format
from pipelines.ingest import ingest
from pipelines.store import ProductArchive


def write_rf3(path: Path, valid_minutes: int, field: np.ndarray) -> None:
    """A Rainfields3-style file: Albers grid in km, 6-minute accumulation in mm."""
    ny, nx = field.shape
    with netCDF4.Dataset(path, "w") as nc:
        nc.institution = "Commonwealth of Australia, Bureau of Meteorology"
        nc.createDimension("x", nx)
        nc.createDimension("y", ny)
        nc.createDimension("n2", 2)
        x = nc.createVariable("x", "f4", ("x",))
        y = nc.createVariable("y", "f4", ("y",))
        x.units = y.units = "km"
        x[:] = -150.0 + 0.5 + np.arange(nx)
        y[:] = 100.0 - 0.5 - np.arange(ny)
        proj = nc.createVariable("proj", "i4")
        proj.grid_mapping_name = "albers_conical_equal_area"
        proj.longitude_of_central_meridian = 151.0
        proj.latitude_of_projection_origin = -33.0
        proj.standard_parallel = np.array([-30.0, -36.0])
        units = "seconds since 1970-01-01 00:00:00 UTC"
        for name, minutes in (("valid_time", valid_minutes), ("start_time", valid_minutes - 6)):
            var = nc.createVariable(name, "i8")
            var.units = units
            var[:] = 1_530_000_000 + 60 * minutes
        precip = nc.createVariable("precipitation", "f4", ("y", "x"), fill_value=-1.0)
        precip.units = "mm"
        precip.grid_mapping = "proj"
        precip[:] = field


def test_bom_rf3_accumulations_become_mm_per_hour(tmp_path: Path, store: str) -> None:
    rng = np.random.default_rng(0)
    fields = [np.round(rng.gamma(0.5, 1.0, size=(40, 60)), 2).astype(np.float32) for _ in range(3)]
    fields[1][5:9, 10:20] = -1.0  # nodata
    paths = []
    for i, field in enumerate(fields):
        path = tmp_path / f"310_2018{i:02d}_rf3.prcp-c10.nc"
        write_rf3(path, 6 * i, field)
        paths.append(path)
    assert detect_format(paths[0]) == "bom_rf3"
    report = ingest(paths, store, "bom", fmt="auto")
    assert report.exit_code == 0 and report.written == 3, report.as_dict()
    with ProductArchive(store, "bom").open() as ds:
        assert np.diff(ds["time"].values).astype("timedelta64[m]").astype(int).tolist() == [6, 6]
        assert ds.attrs["accumulation_minutes"] == 6.0
        assert float(ds["x"][1] - ds["x"][0]) == 1000.0 and float(ds["x"][0]) == -149_500.0
        assert "+proj=aea" in ds["crs"].attrs["proj4"]
        stored = ds["precip"].values
    for got, field in zip(stored, fields, strict=True):
        valid = field >= 0
        np.testing.assert_array_equal(np.isnan(got), ~valid)
        np.testing.assert_allclose(got[valid], np.minimum(field[valid] * 10.0, 300.0), atol=0.0051)
    assert report.qc["nodata_pixels"] == 40


def test_bom_rf3_without_start_time_is_refused(tmp_path: Path) -> None:
    from pipelines.importers import read_file

    path = tmp_path / "rf3.nc"
    write_rf3(path, 6, np.zeros((10, 12), np.float32))
    with netCDF4.Dataset(path, "a") as nc:
        nc.renameVariable("start_time", "other_time")
    with pytest.raises(ValueError, match="accumulation without start_time"):
        read_file(path, "bom_rf3")
