"""pipelines.regrid on real products (FMI, NWC SAF CRR, OPERA) and on fields with known answers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

from pipelines.grid import Grid
from pipelines.ingest import ingest
from pipelines.regrid import grid_of, regrid, regrid_dataset
from pipelines.store import ProductArchive

DATA = Path("/work/shared/data")
LAEA_3035 = (
    "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"
)
POLAR_STERE = "+proj=stere +lat_0=90 +lon_0=25 +lat_ts=60 +ellps=WGS84 +x_0=0 +y_0=0 +units=m"


def _files(directory: Path, pattern: str, n: int) -> list[Path]:
    """The first ``n`` files; missing test data is an error, never a skip."""
    files = sorted(directory.glob(pattern))
    assert len(files) >= n, f"test data missing: {n} x {directory}/{pattern}, got {len(files)}"
    return files[:n]


def _ingest(files: list[Path], store: str, product: str, fmt: str) -> xr.Dataset:
    report = ingest(files, store, product, fmt=fmt)
    assert report.failed == [] and report.written == len(files), report.as_dict()
    return ProductArchive(store, product).open()


def _grid(proj: str, x0: float, y0: float, step: float, nx: int, ny: int) -> Grid:
    """Pixel centres from the top-left centre (x0, y0); y descending."""
    return Grid(crs_proj=proj, x=x0 + step * np.arange(nx), y=y0 - step * np.arange(ny))


def _centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(grid.x, grid.y)


@pytest.fixture(scope="module")
def saf_opera(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset]:
    store = str(tmp_path_factory.mktemp("regrid") / "s.zarr")
    saf = _ingest(_files(DATA / "saf/20180601/CRR", "*.nc", 2), store, "saf", "saf_crri")
    opera = _ingest(_files(DATA / "radar/OPERA/20180824", "*.hdf", 2), store, "opera", "odim_hdf5")
    return saf, opera


def test_identity_on_real_fmi_frames(tmp_path: Path) -> None:
    files = _files(DATA / "radar/fmi/pgm/20160928", "*", 2)
    ds = _ingest(files, str(tmp_path / "s.zarr"), "fmi", "fmi_pgm")
    grid = Grid.from_dataset(ds)
    source = ds["precip"].values
    assert np.isnan(source).any() and (source > 0).any()  # a real frame: rain and nodata

    same = regrid(ds, grid, "nearest")
    assert same.dims == ("time", "y", "x") and same.shape == source.shape
    np.testing.assert_array_equal(same.values, source)  # NaN positions included
    np.testing.assert_array_equal(same["time"].values, ds["time"].values)
    assert same.attrs["grid_mapping"] == "crs" and same.attrs["regrid_method"] == "nearest"
    assert same.attrs["units"] == "mm/h" and same.attrs["regridded_from"] == grid.crs_proj

    # Bilinear at the pixel centres is the identity too, up to the centres being stored to the
    # millimetre (~1e-6 px off): far below the archive's 0.005 mm/h precision.
    smooth = regrid(ds, grid, "bilinear")
    np.testing.assert_allclose(smooth.values, source, rtol=0, atol=1e-4, equal_nan=True)

    # A DataArray carrying the crs coordinate (as regrid returns) works, without a time dim.
    one = regrid(same.isel(time=0), grid, "nearest")
    assert one.dims == ("y", "x")
    np.testing.assert_array_equal(one.values, source[0])

    out = regrid_dataset(ds, grid, "nearest")
    assert Grid.from_dataset(out).same_as(grid) and out["precip"].attrs["grid_mapping"] == "crs"
    assert out.attrs["product"] == "fmi" and out.attrs["regrid_method"] == "nearest"


def test_satellite_onto_radar_grid(saf_opera: tuple[xr.Dataset, xr.Dataset]) -> None:
    saf, opera = saf_opera
    src, dst = grid_of(saf), grid_of(opera)
    out = regrid(saf, dst, "bilinear")
    assert out.shape == (2, *dst.shape) == opera["precip"].shape
    assert out.attrs["regridded_from"] == src.crs_proj
    values = out.values
    # The CRR Europe region covers the whole OPERA domain: finite almost everywhere, with rain.
    assert np.isfinite(values).mean() > 0.99 and (values > 0.1).sum() > 10_000

    # Area mean over a 1200 km box around the OPERA centre, against the source pixels whose
    # centres fall in the same geographic box. Geostationary pixels grow northwards (here
    # 19..32 km2), so the source mean is weighted by each pixel's true area, measured in the
    # equal-area LAEA plane; the plain pixel mean differs by ~15%.
    cx, cy, half = 1_950_000.0, -2_100_000.0, 600_000.0
    in_box = (np.abs(dst.x[None, :] - cx) < half) & (np.abs(dst.y[:, None] - cy) < half)
    # source window from the transformed box outline (with a margin), then exact selection
    edge = np.linspace(-half, half, 50)
    bx = np.concatenate([cx + edge, cx + edge, np.full(50, cx - half), np.full(50, cx + half)])
    by = np.concatenate([np.full(50, cy - half), np.full(50, cy + half), cy + edge, cy + edge])
    gx, gy = Transformer.from_crs(dst.crs, src.crs, always_xy=True).transform(bx, by)
    cols = np.flatnonzero((src.x >= gx.min() - 1e4) & (src.x <= gx.max() + 1e4))
    rows = np.flatnonzero((src.y >= gy.min() - 1e4) & (src.y <= gy.max() + 1e4))
    sx, sy = np.meshgrid(src.x[cols], src.y[rows])
    lx, ly = Transformer.from_crs(src.crs, dst.crs, always_xy=True).transform(sx, sy)
    area = np.abs(
        np.gradient(lx, axis=1) * np.gradient(ly, axis=0)
        - np.gradient(ly, axis=1) * np.gradient(lx, axis=0)
    )
    src_box = (np.abs(lx - cx) < half) & (np.abs(ly - cy) < half)
    for t in range(2):
        field = saf["precip"].values[t][np.ix_(rows, cols)]
        ok = src_box & np.isfinite(field)
        source_mean = (field[ok] * area[ok]).sum() / area[ok].sum()
        regridded_mean = np.nanmean(values[t][in_box])
        assert source_mean > 0.05  # enough rain in the box for the comparison to mean something
        assert regridded_mean == pytest.approx(source_mean, rel=0.02)

    # Beyond the satellite's view (PROJ gives inf) or outside its grid, the output is NaN:
    # a hemisphere-wide LAEA grid reaches both.
    wide = _grid(dst.crs_proj, -8e6, 6e6, 50_000.0, 400, 400)
    far = regrid(saf, wide, "bilinear").values
    tx, ty = _centres(wide)
    gx, gy = Transformer.from_crs(wide.crs, src.crs, always_xy=True).transform(tx, ty)
    with np.errstate(invalid="ignore"):
        outside = ~(
            np.isfinite(gx) & np.isfinite(gy)
            & (gx >= src.x.min() - 1500) & (gx <= src.x.max() + 1500)
            & (gy >= src.y.min() - 1500) & (gy <= src.y.max() + 1500)
        )
    assert (~np.isfinite(gx)).sum() > 10_000 and outside.mean() > 0.5  # both cases present
    assert np.isnan(far[:, outside]).all()
    assert np.isfinite(far[:, ~outside]).mean() > 0.8  # inside: valid except off-disc corners


def test_bilinear_reproduces_linear_field_across_crs() -> None:
    a, b = 1e-6, 2e-6
    src = _grid(LAEA_3035, 3_300_000.0, 4_200_000.0, 4_000.0, 500, 500)
    sx, sy = _centres(src)
    field = xr.DataArray(a * sx + b * sy, dims=("y", "x"))

    # a polar-stereographic grid (axes rotated ~12 degrees against LAEA) around 52N 10E
    x0, y0 = Transformer.from_crs("EPSG:4326", POLAR_STERE, always_xy=True).transform(10.0, 52.0)
    dst = _grid(POLAR_STERE, x0 - 300_000.0, y0 + 250_000.0, 3_000.0, 200, 170)
    out = regrid(field, dst, "bilinear", source_grid=src)

    gx, gy = Transformer.from_crs(dst.crs, src.crs, always_xy=True).transform(*_centres(dst))
    expected = a * gx + b * gy
    assert np.isfinite(out.values).all()
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    # nearest is not exact, so the tolerance above does discriminate
    nearest = regrid(field, dst, "nearest", source_grid=src).values
    assert not np.allclose(nearest, expected, rtol=1e-6)

    # a target reaching beyond the source: NaN exactly outside the source pixel area
    big = _grid(POLAR_STERE, x0 - 2_000_000.0, y0 + 2_000_000.0, 20_000.0, 200, 200)
    got = regrid(field, big, "bilinear", source_grid=src).values
    gx, gy = Transformer.from_crs(big.crs, src.crs, always_xy=True).transform(*_centres(big))
    inside = (
        (gx >= src.x[0] - 2_000) & (gx <= src.x[-1] + 2_000)
        & (gy <= src.y[0] + 2_000) & (gy >= src.y[-1] - 2_000)
    )
    assert 0.1 < inside.mean() < 0.9
    np.testing.assert_array_equal(np.isfinite(got), inside)


def test_bilinear_nodata_rule() -> None:
    """Renormalised: NaN neighbours are left out; NaN where valid ones weigh < 0.5."""
    src = _grid(LAEA_3035, 4_000_500.0, 3_000_500.0, 1_000.0, 4, 4)
    data = np.arange(16, dtype=np.float64).reshape(4, 4)
    data[1, 1] = np.nan  # centre at (4_001_500, 2_999_500)
    field = xr.DataArray(data, dims=("y", "x"))

    def at(x: float, y: float) -> float:
        # a regular 2x2 target whose other pixels lie far outside the source
        point = Grid(LAEA_3035, x=np.array([x, x + 1e5]), y=np.array([y, y - 1e5]))
        return float(regrid(field, point, "bilinear", source_grid=src).values[0, 0])

    assert at(4_001_000.0, 3_000_000.0) == pytest.approx((0 + 1 + 4) / 3)  # 1 of 4 is NaN
    assert at(4_003_000.0, 2_998_000.0) == pytest.approx((10 + 11 + 14 + 15) / 4)
    assert np.isnan(at(4_001_500.0, 2_999_500.0))  # on the NaN pixel: weight 0
    assert np.isnan(at(4_001_700.0, 2_999_400.0))  # NaN pixel weighs 0.8 * 0.9 = 0.72
    assert at(4_002_100.0, 2_999_500.0) == pytest.approx(data[1, 2])  # NaN weighs 0.4


def test_average_is_block_mean() -> None:
    rng = np.random.default_rng(0)
    fine = _grid(LAEA_3035, 4_000_500.0, 3_059_500.0, 1_000.0, 80, 60)
    data = rng.gamma(0.5, 2.0, size=(2, 60, 80))
    data[rng.random(data.shape) < 0.2] = np.nan
    data[:, 10:12, 20:22] = np.nan  # a whole block of nodata -> NaN
    times = np.array(["2020-01-01T00:00", "2020-01-01T00:05"], dtype="datetime64[ns]")
    source = xr.Dataset(
        {"precip": (("time", "y", "x"), data, {"units": "mm/h"}),
         "crs": ((), np.int32(0), fine.cf_grid_mapping_attrs())},
        coords={"time": times, "y": fine.y, "x": fine.x},
    )
    # 2 km grid in the same CRS, edges on the fine grid's; one extra column east of the source
    coarse = _grid(LAEA_3035, 4_001_000.0, 3_059_000.0, 2_000.0, 41, 30)
    out = regrid(source, coarse, "average")
    assert out.dims == ("time", "y", "x") and out.shape == (2, 30, 41)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        expected = np.nanmean(data.reshape(2, 30, 2, 40, 2), axis=(2, 4))
    assert np.isnan(expected[:, 5, 10]).all()
    np.testing.assert_allclose(out.values[:, :, :40], expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(out.values[:, :, 40]).all()  # no source pixel there
    np.testing.assert_array_equal(out["time"].values, times)
