"""Ingest of real radar/satellite files: values, units, idempotence, ordering, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import PRODUCTS, nowcast_cli, sample_files

from pipelines.importers import detect_format, read_file
from pipelines.ingest import ingest
from pipelines.store import SCALE, ProductArchive

with contextlib.redirect_stdout(io.StringIO()):
    from pysteps.io import importers as pysteps_importers
    from pysteps.utils.conversion import to_rainrate

PYSTEPS_READERS = {
    "fmi": lambda p: pysteps_importers.import_fmi_pgm(str(p), gzipped=True),
    "mch": lambda p: pysteps_importers.import_mch_gif(str(p), product="AQC", unit="mm", accutime=5),
    "knmi": lambda p: pysteps_importers.import_knmi_hdf5(str(p)),
    "opera": lambda p: pysteps_importers.import_opera_hdf5(str(p)),
    "saf": lambda p: pysteps_importers.import_saf_crri(str(p)),
}


def pysteps_rain_rate(product: str, path: Path) -> np.ndarray:
    """pysteps' own import and conversion to mm/h: the reference the archive must match."""
    data, _, meta = PYSTEPS_READERS[product](path)
    rate, _ = to_rainrate(data, meta)
    return rate


@pytest.mark.parametrize("product", list(PRODUCTS))
def test_every_sample_product_matches_pysteps(product: str, store: str) -> None:
    files = sample_files(product, 3)
    report = ingest(files, store, product, fmt=PRODUCTS[product][1])
    assert report.exit_code == 0 and report.written == 3, report.as_dict()
    with ProductArchive(store, product).open() as ds:
        assert ds["precip"].attrs["units"] == "mm/h"
        assert ds["precip"].dims == ("time", "y", "x")
        assert ds["x"].attrs["units"] == "m" and ds["y"].attrs["units"] == "m"
        assert "crs_wkt" in ds["crs"].attrs and "proj4" in ds["crs"].attrs
        stored = ds["precip"].values
        times = ds["time"].values
    assert np.all(np.diff(times) > np.timedelta64(0))
    for i, path in enumerate(files):
        expected = pysteps_rain_rate(product, path)
        plausible = np.isfinite(expected) & (expected <= 300.0)
        got = stored[i]
        # nodata stays nodata, rain stays rain (to within half a quantisation step)
        assert np.array_equal(np.isnan(got[plausible]), np.zeros(plausible.sum(), bool))
        assert np.array_equal(np.isnan(got), ~plausible)
        err = np.abs(got[plausible] - expected[plausible])
        assert err.max() <= float(SCALE) / 2 + 1e-4 * expected[plausible].max(), (product, err.max())


def test_dbz_and_accumulation_products_both_end_in_mm_per_hour(store: str) -> None:
    fmi_path, mch_path = sample_files("fmi", 1)[0], sample_files("mch", 1)[0]
    fmi_raw, mch_raw = read_file(fmi_path, "fmi_pgm"), read_file(mch_path, "mch_gif")
    assert (fmi_raw.unit, mch_raw.unit) == ("dBZ", "mm")
    ingest([fmi_path], store, "fmi", fmt="fmi_pgm")
    ingest([mch_path], store, "mch", fmt="mch_gif")
    with ProductArchive(store, "fmi").open() as fmi, ProductArchive(store, "mch").open() as mch:
        # 10 dBZ -> Z = 10 -> R = (10 / 223) ** (1 / 1.53) mm/h with FMI's Z-R relation
        dbz = fmi_raw.data[np.isfinite(fmi_raw.data) & (fmi_raw.data > 20)][0]
        idx = np.argwhere(fmi_raw.data == dbz)[0]
        assert fmi["precip"].values[0][tuple(idx)] == pytest.approx(
            (10 ** (dbz / 10) / 223.0) ** (1 / 1.53), abs=0.006
        )
        assert fmi.attrs["zr_a"] == 223.0 and fmi.attrs["zr_b"] == 1.53
        assert "Z = a * R^b" in fmi.attrs["conversion"]
        # 5-minute accumulation in mm -> times 12 for mm/h
        wet = np.nanargmax(mch_raw.data)
        assert mch["precip"].values[0].ravel()[wet] == pytest.approx(
            min(mch_raw.data.ravel()[wet] * 12.0, 300.0), abs=0.006
        )
        assert mch.attrs["accumulation_minutes"] == 5.0
        assert fmi["precip"].attrs["units"] == mch["precip"].attrs["units"] == "mm/h"


def test_auto_detects_every_sample_format() -> None:
    for product, (_, fmt, _) in PRODUCTS.items():
        assert detect_format(sample_files(product, 1)[0]) == fmt, product


def test_reingest_is_idempotent(store: str) -> None:
    files = sample_files("knmi", 6)
    first = ingest(files, store, "knmi", fmt="auto")
    before = ProductArchive(store, "knmi").open().load()
    second = ingest(files, store, "knmi", fmt="auto", workers=2)
    after = ProductArchive(store, "knmi").open().load()
    assert first.written == 6 and second.written == 0 and second.already_present == 6
    xr.testing.assert_identical(before, after)


def test_out_of_order_arrival_ends_time_sorted(store: str) -> None:
    files = sample_files("mch", 10)
    ingest(files[6:], store, "mch", fmt="mch_gif")
    ingest([files[2], files[0]], store, "mch", fmt="mch_gif", batch_size=1)
    report = ingest(files, store, "mch", fmt="mch_gif")
    assert report.inserted_out_of_order > 0
    reference = str(Path(store).with_name("reference.zarr"))
    ingest(files, reference, "mch", fmt="mch_gif")
    got, want = ProductArchive(store, "mch").open().load(), ProductArchive(reference, "mch").open().load()
    assert np.all(np.diff(got["time"].values) > np.timedelta64(0))
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_array_equal(got["precip"].values, want["precip"].values)


def test_corrupt_and_truncated_files_are_skipped_and_reported(tmp_path: Path, store: str) -> None:
    good = sample_files("fmi", 4)
    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in good:
        shutil.copy(path, folder / path.name)
    truncated = folder / "201609281505_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
    truncated.write_bytes(good[0].read_bytes()[:3000])
    garbage = folder / "201609281510_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 100)
    result = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", store, "--product", "fmi",
                         "--workers", "2", "--json", str(folder))
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == 4
    assert sorted(Path(f["path"]).name for f in summary["failed"]) == sorted([truncated.name, garbage.name])
    assert ProductArchive(store, "fmi").times().size == 4


def test_frame_on_another_grid_is_rejected_with_a_clear_error(store: str) -> None:
    ingest(sample_files("fmi", 2), store, "radar", fmt="fmi_pgm")
    report = ingest(sample_files("mch", 1), store, "radar", fmt="mch_gif")
    assert report.exit_code == 1 and report.written == 0
    (path, error), = report.failed
    assert "grid/CRS differs from product 'radar'" in error and "1226x760" in error
    assert ProductArchive(store, "radar").times().size == 2


def test_unknown_format_is_refused_before_anything_is_written(store: str) -> None:
    result = nowcast_cli("ingest", "--format", "nexrad_l2", "--store", store, "--product", "x",
                         str(sample_files("fmi", 1)[0]))
    assert result.returncode != 0 and "unknown format 'nexrad_l2'" in result.stderr
    assert not Path(store).exists()


def test_store_info_reports_products_steps_gaps_and_grid(store: str) -> None:
    files = sample_files("fmi", 12)
    ingest(files[:5] + files[8:], store, "fmi", fmt="fmi_pgm")
    ingest(sample_files("opera", 2), store, "opera", fmt="odim_hdf5")
    result = nowcast_cli("store", "info", "--store", store, "--json", check=True)
    summary = {p["product"]: p for p in json.loads(result.stdout)["products"]}
    fmi, opera = summary["fmi"], summary["opera"]
    assert fmi["frames"] == 9 and fmi["step_minutes"] == 5.0
    assert fmi["gaps"] == [{"after": "2016-09-28T15:05:00Z", "before": "2016-09-28T15:25:00Z", "missing_frames": 3}]
    assert (fmi["grid"]["ny"], fmi["grid"]["nx"]) == (1226, 760)
    assert opera["step_minutes"] == 15.0 and opera["grid"]["dx_m"] == 2000.0
    assert "+proj=laea" in opera["crs"]["proj4"] and opera["size_on_disk_bytes"] > 0
    table = nowcast_cli("store", "info", "--store", store, "--product", "fmi", check=True).stdout
    assert "3 missing frames" in table and "5 min" in table


def test_fsspec_url_store_goes_through_the_same_path() -> None:
    """An fsspec URL (here the in-process memory:// filesystem) instead of a local path."""
    from pipelines.info import store_summary

    url = "memory://nowcast-test/archive.zarr"
    files = sample_files("fmi", 3)
    assert ingest(files[1:], url, "fmi", fmt="fmi_pgm").written == 2
    late = ingest(files, url, "fmi", fmt="fmi_pgm")
    assert (late.written, late.inserted_out_of_order, late.already_present) == (1, 1, 2)
    summary = store_summary(url)["products"][0]
    assert summary["frames"] == 3 and summary["size_on_disk_bytes"] > 0
    assert summary["start"] == "2016-09-28T14:45:00Z"


def test_a_file_of_another_format_says_what_it_looks_like(store: str) -> None:
    from pipelines.ingest import ingest

    report = ingest(sample_files("opera", 1), store, "knmi", fmt="knmi_hdf5", workers=1)
    ((path, message),) = report.failed
    assert "does not look like knmi_hdf5" in message and "detects it as odim_hdf5" in message


def test_odim_provider_is_the_originating_centre_of_what_source() -> None:
    from pipelines.importers.odim_hdf5 import originating_centre, read

    assert read(sample_files("opera", 1)[0]).attrs["provider"] == "EUMETNET OPERA"  # ORG:247
    assert originating_centre("WMO:0-20000-0-06260,ORG:99,CTY:545").startswith("KNMI")
    assert originating_centre("NOD:fikor,PLC:Korpo") == "ODIM node fikor"
    assert originating_centre("ORG:12") == "WMO originating centre 12"


def test_a_folder_of_two_source_products_keeps_them_apart(tmp_path: Path, store: str) -> None:
    """OPERA NIMBUS ships rain rate and accumulation files with the same valid times: the second
    kind must be rejected by name, not reported 'already present' and silently dropped."""
    import h5py

    rate = sample_files("opera", 3)
    folder = tmp_path / "nimbus"
    folder.mkdir()
    for path in rate:
        shutil.copy(path, folder / path.name)
        accumulation = folder / path.name.replace(".hdf", "_acrr.hdf")
        shutil.copy(path, accumulation)  # the same composite, relabelled as a 15-min accumulation
        with h5py.File(accumulation, "r+") as f:
            f["dataset1/what"].attrs["quantity"] = np.bytes_(b"ACRR")
    report = ingest([folder], store, "opera", fmt="odim_hdf5")
    assert report.written == 3 and report.already_present == 0
    assert len(report.failed) == 3 and all(p.endswith("_acrr.hdf") for p, _ in report.failed)
    assert "'ODIM ACRR ORG:247' is not product 'opera''s 'ODIM RATE ORG:247'" in report.failed[0][1]
    assert "another --product" in report.failed[0][1]
    # and into a product of their own, they go in
    assert ingest(sorted(folder.glob("*_acrr.hdf")), store, "opera_acrr", fmt="odim_hdf5").written == 3
