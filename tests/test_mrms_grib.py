"""MRMS GRIB2: no sample files ship, so a PrecipRate-like message is generated with eccodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.importers import detect_format
from pipelines.ingest import ingest
from pipelines.store import ProductArchive


def write_mrms(path: Path, hour: int, field: np.ndarray) -> None:
    """Generate the GRIB2 file in a child process (see make_mrms_grib.py for why)."""
    npy = path.with_suffix(".npy")
    np.save(npy, field)
    script = Path(__file__).with_name("make_mrms_grib.py")
    subprocess.run([sys.executable, str(script), str(npy), str(path), str(hour)], check=True)


def test_mrms_rain_rate_keeps_its_native_lat_lon_grid(tmp_path: Path, store: str) -> None:
    rng = np.random.default_rng(1)
    fields = [np.round(rng.gamma(0.4, 4.0, size=(30, 50)), 1) for _ in range(2)]
    fields[0][:4, :6] = -3.0  # no coverage
    paths = []
    for hour, field in enumerate(fields):
        path = tmp_path / f"PrecipRate_00.00_20190601-{hour:02d}0000.grib2"
        write_mrms(path, hour, field)
        paths.append(path)
    assert detect_format(paths[0]) == "mrms_grib"
    report = ingest(paths, store, "mrms", fmt="auto")
    assert report.exit_code == 0 and report.written == 2, report.as_dict()
    with ProductArchive(store, "mrms").open() as ds:
        assert ds["x"].attrs["units"] == "degrees_east" and ds["y"].attrs["standard_name"] == "latitude"
        np.testing.assert_allclose(ds["x"].values[[0, -1]], [-99.995, -99.505], atol=1e-6)
        np.testing.assert_allclose(ds["y"].values[[0, -1]], [40.005, 39.715], atol=1e-6)
        assert np.diff(ds["time"].values).astype("timedelta64[m]").astype(int).tolist() == [60]
        stored = ds["precip"].values
    for got, field in zip(stored, fields, strict=True):
        valid = field != -3.0
        np.testing.assert_array_equal(np.isnan(got), ~valid)
        np.testing.assert_allclose(got[valid], field[valid], atol=0.006)
