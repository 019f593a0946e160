"""The CF-netCDF importer on the real TAASRAD19 archive: many frames per file, nodata, times, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipelines.convert import dbz_to_rain_rate
from pipelines.importers import detect_format, frame_count, read_frames
from pipelines.ingest import ingest
from pipelines.store import ProductArchive
from tests.conftest import DATA, nowcast_cli, sample_files

TAASRAD19 = DATA / "radar" / "taasrad19"
#: the shortest month (288 frames, one day): every test reads it
DECEMBER = TAASRAD19 / "taasrad19_201512.nc"


@pytest.fixture(scope="module")
def december() -> Path:
    if not DECEMBER.is_file():
        pytest.fail(f"{DECEMBER} is missing: the TAASRAD19 sample (../shared/data/radar/taasrad19) is needed")
    return DECEMBER


@pytest.fixture(scope="module")
def december_store(tmp_path_factory: pytest.TempPathFactory, december: Path) -> str:
    store = str(tmp_path_factory.mktemp("cf") / "archive.zarr")
    report = ingest([december], store, "taasrad19", fmt="cf_netcdf")
    assert report.exit_code == 0, report.failed
    return store


def test_auto_detects_the_taasrad19_files(december: Path) -> None:
    assert detect_format(december) == "cf_netcdf"
    assert frame_count(december, "cf_netcdf") == 288


def test_values_times_and_nodata_equal_xarrays_decoding(december: Path, december_store: str) -> None:
    with xr.open_dataset(december) as ds:
        dbz = ds["reflectivity"].values.astype(np.float64)
        times = ds["time"].values.astype("datetime64[s]")
    expected = dbz_to_rain_rate(dbz, 200.0, 1.6)
    expected[dbz <= 0.0] = 0.0  # the 0 dBZ code is no echo
    archive = ProductArchive(december_store, "taasrad19")
    np.testing.assert_array_equal(archive.times(), times)
    with archive.open() as stored:
        rain = stored["precip"].values
    nodata = np.isnan(dbz)
    assert nodata.any(axis=0).sum() > 800  # the corners outside the 120 km radar circle
    np.testing.assert_array_equal(np.isnan(rain), nodata)  # nodata stays nodata, never 0
    scale = 0.01  # the archive stores mm/h in steps of 0.01
    np.testing.assert_allclose(rain[~nodata], expected[~nodata], atol=scale / 2 + 1e-6, rtol=1e-6)
    assert np.nanmax(rain) > 5.0  # rain of 30+ dBZ survives the conversion


def test_a_user_zr_relation_is_applied(tmp_path: Path, december: Path) -> None:
    store = str(tmp_path / "zr.zarr")
    result = nowcast_cli("ingest", "--format", "cf_netcdf", "--store", store, "--product", "t", "--zr", "300", "1.4",
                         "--json", str(december))
    assert result.returncode == 0, result.stderr
    with ProductArchive(store, "t").open() as ds:
        assert ds.attrs.get("zr_a", ds["precip"].attrs.get("zr_a")) in (300.0, None)
        conversion = json.dumps(dict(ds.attrs)) + json.dumps(dict(ds["precip"].attrs))
    assert "a = 300" in conversion and "b = 1.4" in conversion


def test_rerun_and_overlap_store_each_frame_once(tmp_path: Path, december: Path) -> None:
    store = str(tmp_path / "again.zarr")
    first = ingest([december], store, "taasrad19", fmt="cf_netcdf", batch_size=50)
    half = tmp_path / "half.nc"
    with xr.open_dataset(december) as ds:
        ds.isel(time=slice(100, 200)).to_netcdf(half)
    second = ingest([december, half], store, "taasrad19", fmt="cf_netcdf")
    assert (first.written, second.written, second.already_present) == (288, 0, 388)
    assert len(ProductArchive(store, "taasrad19").times()) == 288


def _without(source: Path, target: Path, what: str) -> Path:
    with xr.open_dataset(source) as ds:
        small = ds.isel(time=slice(0, 5)).load()
    if what == "time":
        small = small.isel(time=0).drop_vars("time")
        small["reflectivity"] = small["reflectivity"].expand_dims("frame")
    elif what == "variable":
        small["reflectivity"].attrs["standard_name"] = "air_temperature"
    elif what == "grid":
        small = small.drop_vars(["x", "y"])
    small.encoding.pop("unlimited_dims", None)
    small.to_netcdf(target)
    return target


@pytest.mark.parametrize(("what", "message"), [
    ("time", "no time axis"), ("variable", "no known variable"), ("grid", "no usable grid"),
])
def test_a_file_missing_a_part_is_rejected_by_name_and_nothing_stored(
    tmp_path: Path, december: Path, what: str, message: str,
) -> None:
    bad = _without(december, tmp_path / f"no_{what}.nc", what)
    store = str(tmp_path / "bad.zarr")
    report = ingest([bad], store, "taasrad19", fmt="cf_netcdf")
    assert report.written == 0 and len(report.failed) == 1
    assert message in report.failed[0][1] and "no_" in report.failed[0][1]
    assert not ProductArchive(store, "taasrad19").exists()


def test_a_folder_mixing_formats_keeps_every_good_frame(tmp_path: Path, december: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(december, folder / december.name)
    _without(december, folder / "broken.nc", "variable")
    fmi = sample_files("fmi", 2)
    for path in fmi:  # named to sort after the netCDF: the first good frame defines the product's grid
        shutil.copy(path, folder / f"zz_{path.name}")
    store = str(tmp_path / "mixed.zarr")
    report = ingest([folder], store, "taasrad19", fmt="auto")
    assert report.written == 288
    rejected = {Path(path).name: error for path, error in report.failed}
    assert "broken.nc" in rejected
    # the FMI frames are another grid: refused by name, not merged into the product
    assert all(any(p.name in name for name in rejected) for p in fmi), rejected
    assert len(ProductArchive(store, "taasrad19").times()) == 288


def test_slices_of_a_long_file_read_what_the_whole_file_holds(december: Path) -> None:
    whole, problems = read_frames(december, "cf_netcdf", 0, None)
    parts = [frame for start in range(0, 288, 100)
             for frame in read_frames(december, "cf_netcdf", start, start + 100)[0]]
    assert not problems and len(whole) == len(parts) == 288
    assert [f.time for f in whole] == [f.time for f in parts]
    np.testing.assert_array_equal(whole[137].data, parts[137].data)


@pytest.mark.parametrize("committed_before_kill", [16, 150])
def test_kill_9_mid_ingest_then_rerun_stores_every_frame_once(
    tmp_path: Path, december: Path, committed_before_kill: int,
) -> None:
    """A real ``kill -9`` of ``nowcast ingest`` once some of a long file's frames are committed (in
    the first slice, and in the second), then the same command again: all 288 frames, each once."""
    import subprocess
    import sys

    from tests.conftest import kill_9_when

    store = str(tmp_path / "killed.zarr")
    command = [str(Path(sys.executable).with_name("nowcast")), "ingest", "--format", "cf_netcdf", "--store", store,
               "--product", "taasrad19", "--batch-size", "8", str(december)]
    archive = ProductArchive(store, "taasrad19")

    def committed() -> bool:
        try:
            return archive.exists() and len(archive.times()) >= committed_before_kill
        except Exception:  # mid-write metadata: not yet
            return False

    kill_9_when(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), committed,
                "ingest")
    partial = len(ProductArchive(store, "taasrad19").times())
    assert committed_before_kill <= partial < 288
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    times = ProductArchive(store, "taasrad19").times()
    assert len(times) == 288 and len(np.unique(times)) == 288 and np.all(np.diff(times) > np.timedelta64(0, "s"))
    with xr.open_dataset(december) as ds:
        np.testing.assert_array_equal(times, ds["time"].values.astype("datetime64[s]"))
