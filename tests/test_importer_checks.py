"""Importer output checks (``check_raw_frame``) run once, in ``read_file``, for every importer's frame.

odim_hdf5, knmi_hdf5, saf_crri and bom_rf3 never checked their own output: real files (or, for BoM,
a file in the documented layout) go through the real importers, unmocked, and are then broken.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import sample_files
from test_bom_rf3 import write_rf3

from pipelines.grid import Grid
from pipelines.importers import InvalidFrameError, read_file
from pipelines.importers._common import check_raw_frame
from pipelines.ingest import ingest


def opera_with_infinite_rain(tmp_path: Path) -> Path:
    """A real OPERA rain-rate composite (float64 ODIM data, gain 1) with +inf and -inf written into it."""
    source = sample_files("opera", 1)[0]
    path = tmp_path / source.name
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        data = f["dataset1/data1/data"]
        data[100, 200] = np.inf
        data[1500, 7] = -np.inf
    return path


def test_infinite_rain_in_an_odim_file_is_rejected_naming_the_file(tmp_path: Path, store: str) -> None:
    path = opera_with_infinite_rain(tmp_path)
    expected = rf"{re.escape(path.name)}: 2 infinite value\(s\) in the image \(first at row 100, column 200\)"
    with pytest.raises(InvalidFrameError, match=expected):
        read_file(path, "odim_hdf5")
    with pytest.raises(InvalidFrameError, match=expected):
        read_file(path)  # the detected importer's frame is checked too
    good = sample_files("opera", 2)[1]
    report = ingest([path, good], store, "opera", fmt="odim_hdf5")
    assert report.written == 1 and report.exit_code == 1
    ((failed_path, message),) = report.failed
    assert failed_path == str(path)
    assert re.match(rf"InvalidFrameError: {expected}; nodata must be NaN$", message), message


def test_infinite_rain_in_a_bom_file_is_rejected_but_nan_nodata_is_not(tmp_path: Path) -> None:
    field = np.ones((10, 12), np.float32)
    field[2, 3] = np.nan  # NaN is nodata: allowed
    field[4, 5] = -1.0  # the file's fill value: nodata too
    fine = tmp_path / "fine_rf3.nc"
    write_rf3(fine, 6, field)
    raw = read_file(fine, "bom_rf3")
    assert np.isnan(raw.data[2, 3]) and np.isnan(raw.data[4, 5])
    field[7, 1] = np.inf
    broken = tmp_path / "inf_rf3.nc"
    write_rf3(broken, 6, field)
    with pytest.raises(InvalidFrameError, match=r"inf_rf3\.nc: 1 infinite value\(s\) .*row 7, column 1\)"):
        read_file(broken, "bom_rf3")


@pytest.fixture(scope="module", params=["knmi", "saf"])
def real_raw(request: pytest.FixtureRequest):
    """A frame decoded by a real importer from a real sample file, and that file."""
    from conftest import PRODUCTS

    path = sample_files(request.param, 1)[0]
    return read_file(path, PRODUCTS[request.param][1]), path


def test_real_frames_pass_unchanged(real_raw) -> None:
    raw, path = real_raw
    assert np.isnan(raw.data).any()  # the real nodata pixels are NaN and allowed
    assert check_raw_frame(raw, path) is raw


def test_a_grid_of_another_shape_is_rejected(real_raw) -> None:
    raw, path = real_raw
    ny, nx = raw.data.shape
    grid = Grid(crs_proj=raw.grid.crs_proj, x=raw.grid.x[:-1], y=raw.grid.y)
    expected = rf"{re.escape(path.name)}: grid is {ny}x{nx - 1} .* image is {ny}x{nx}"
    with pytest.raises(InvalidFrameError, match=expected):
        check_raw_frame(replace(raw, grid=grid), path)


@pytest.mark.parametrize("reshape", [lambda d: d[0], lambda d: d[None], lambda d: d[:1]], ids=["1d", "3d", "one_row"])
def test_anything_but_a_2d_image_is_rejected(real_raw, reshape) -> None:
    raw, path = real_raw
    data = reshape(raw.data)
    with pytest.raises(InvalidFrameError, match=rf"{re.escape(path.name)}: expected a 2-D image, got shape"):
        check_raw_frame(replace(raw, data=data), path)


def test_a_grid_upside_down_is_rejected(real_raw) -> None:
    raw, path = real_raw
    grid = Grid(crs_proj=raw.grid.crs_proj, x=raw.grid.x, y=raw.grid.y[::-1])
    with pytest.raises(InvalidFrameError, match="north to south"):
        check_raw_frame(replace(raw, grid=grid), path)


@pytest.mark.parametrize("time", [None, np.datetime64("NaT", "s")], ids=["none", "nat"])
def test_a_frame_without_a_valid_time_is_rejected(real_raw, time) -> None:
    raw, path = real_raw
    with pytest.raises(InvalidFrameError, match=rf"{re.escape(path.name)}: no valid time"):
        check_raw_frame(replace(raw, time=time), path)


def test_infinite_values_count_only_where_not_masked(real_raw) -> None:
    raw, path = real_raw
    data = raw.data.copy()
    data[0, 0] = np.inf
    with pytest.raises(InvalidFrameError, match=r"1 infinite value\(s\)"):
        check_raw_frame(replace(raw, data=data), path)
    masked = np.ma.masked_invalid(data)  # pysteps' other nodata convention: a masked pixel is nodata
    check_raw_frame(replace(raw, data=masked), path)
