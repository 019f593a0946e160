"""Put one product onto another product's grid, so that models can take several sources at once.

A satellite rain-rate product (e.g. NWC SAF CRR, 3 km geostationary pixels) and a radar
composite live on different projected grids; a multi-source model needs them on one. The
pixel mapping depends only on the two grids, so it is computed once per call (one pyproj
transform of all target, or source, pixel centres) and reused for every time slice: the
transform is the expensive part, the per-slice sampling is cheap.

Methods
-------
``nearest``
    Value of the source pixel containing the target pixel centre (NaN stays NaN).
``bilinear``
    Bilinear interpolation between the four surrounding source pixel centres. Nodata is
    handled by *renormalised* interpolation: the data (NaN -> 0) and a validity weight
    (1 where valid) are interpolated separately and divided; the result is NaN where the
    valid neighbours carry less than half of the interpolation weight (``weight < 0.5``).
    This keeps rain at the edges of the valid area instead of eroding a pixel there, and never
    lets a NaN neighbour with a tiny weight blank a pixel.
``average``
    For a coarser target (downsampling): the mean of all valid source pixels whose centre
    falls inside the target pixel; NaN where there are none. Target pixels that receive no
    source centre at all (upsampling) are NaN, so use it only towards coarser grids.

Target pixels whose centre lies outside the source grid's pixel area (or that the transform
cannot map, e.g. off the geostationary disc, where PROJ returns inf) are NaN. For
``nearest``/``bilinear`` the source domain is the pixel *area*, i.e. half a pixel beyond the
outer pixel centres; in that half-pixel margin bilinear uses the edge pixel's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr
from pyproj import Transformer
from scipy import ndimage

from pipelines.grid import Grid
from pipelines.store import VARIABLE

Method = Literal["nearest", "bilinear", "average"]
METHODS: tuple[str, ...] = ("nearest", "bilinear", "average")


# -- grid helpers ------------------------------------------------------------------------------
def _axis(values: np.ndarray, name: str) -> tuple[float, float]:
    """(first centre, signed step) of a regular axis; index = (coord - first) / step.

    The step is taken end to end so that coordinates rounded to the millimetre (as stored)
    do not bias it; an irregular axis is refused, since fractional indices would be wrong.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"{name}: need a 1-D axis with at least 2 pixel centres")
    step = (values[-1] - values[0]) / (values.size - 1)
    if step == 0 or not np.allclose(np.diff(values), step, rtol=0, atol=1e-3 * abs(step)):
        raise ValueError(f"{name}: pixel centres are not regularly spaced")
    return float(values[0]), float(step)


def _transformer(src: Grid, dst: Grid) -> Transformer:
    return Transformer.from_crs(src.crs, dst.crs, always_xy=True)


def _centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (x, y) of all pixel centres, row-major like the (y, x) arrays."""
    xx, yy = np.meshgrid(np.asarray(grid.x, np.float64), np.asarray(grid.y, np.float64))
    return xx.ravel(), yy.ravel()


def grid_of(source: xr.Dataset | xr.DataArray) -> Grid:
    """The grid of a product Dataset, or of a DataArray carrying a ``crs`` coordinate.

    ``ds["precip"]`` alone loses the ``crs`` data variable, hence the explicit error: pass
    the Dataset, or ``source_grid=`` to :func:`regrid`.
    """
    names = source.variables if isinstance(source, xr.Dataset) else source.coords
    if "crs" not in names or "proj4" not in source["crs"].attrs:
        raise ValueError(
            "source has no 'crs' variable/coordinate with a 'proj4' attribute; "
            "pass the product Dataset or source_grid="
        )
    return Grid.from_dataset(source)


# -- precomputed mappings ----------------------------------------------------------------------
@dataclass(frozen=True)
class PointMapping:
    """Target pixels inside the source (flat indices) and their fractional source (row, col)."""

    target_index: np.ndarray  # (n,) int64, into the flattened target (ny * nx)
    coords: np.ndarray  # (2, n) float64, (row, col) for ndimage.map_coordinates


@dataclass(frozen=True)
class _BinMapping:
    """Source pixels whose centre falls in a target pixel, and that target pixel."""

    source_index: np.ndarray  # (n,) int64, into the flattened source
    target_index: np.ndarray  # (n,) int64, into the flattened target


def fractional_indices(points: Grid, onto: Grid, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of ``points`` as fractional (row, col) indices of ``onto``'s pixel centres."""
    x0, dx = _axis(onto.x, f"{name} x")
    y0, dy = _axis(onto.y, f"{name} y")
    px, py = _centres(points)
    ox, oy = _transformer(points, onto).transform(px, py)
    # dy < 0 for north-to-south grids: the quotient is still the row index
    return (np.asarray(oy) - y0) / dy, (np.asarray(ox) - x0) / dx


def _point_mapping(src: Grid, dst: Grid) -> PointMapping:
    """Target pixel centres -> fractional source indices (one transform for all times)."""
    ny, nx = src.shape
    row, col = fractional_indices(dst, src, "source")
    with np.errstate(invalid="ignore"):
        inside = (
            np.isfinite(col) & np.isfinite(row)
            & (col >= -0.5) & (col <= nx - 0.5)
            & (row >= -0.5) & (row <= ny - 0.5)
        )
    index = np.flatnonzero(inside)
    coords = np.stack([np.clip(row[index], 0, ny - 1), np.clip(col[index], 0, nx - 1)])
    return PointMapping(target_index=index, coords=coords)


def _bin_mapping(src: Grid, dst: Grid) -> _BinMapping:
    """Source pixel centres -> the target pixel containing them (one transform for all times)."""
    ny, nx = dst.shape
    row, col = fractional_indices(src, dst, "target")
    with np.errstate(invalid="ignore"):
        col = np.floor(col + 0.5)
        row = np.floor(row + 0.5)
        inside = (
            np.isfinite(col) & np.isfinite(row)
            & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        )
    source_index = np.flatnonzero(inside)
    target_index = row[source_index].astype(np.int64) * nx + col[source_index].astype(np.int64)
    return _BinMapping(source_index=source_index, target_index=target_index)


# -- per-slice samplers ------------------------------------------------------------------------
def sample_nearest(field: np.ndarray, mapping: PointMapping) -> np.ndarray:
    return ndimage.map_coordinates(field, mapping.coords, order=0, mode="nearest", prefilter=False)


def sample_bilinear(field: np.ndarray, mapping: PointMapping) -> np.ndarray:
    """Renormalised bilinear: NaN where valid neighbours hold < half the weight."""
    valid = np.isfinite(field)
    data = np.where(valid, field, 0.0)
    kwargs = dict(order=1, mode="nearest", prefilter=False)
    total = ndimage.map_coordinates(data, mapping.coords, **kwargs)
    weight = ndimage.map_coordinates(valid.astype(np.float64), mapping.coords, **kwargs)
    out = np.full(total.shape, np.nan)
    ok = weight >= 0.5
    out[ok] = total[ok] / weight[ok]
    return out


def _sample_average(field: np.ndarray, mapping: _BinMapping, size: int) -> np.ndarray:
    values = field.ravel()[mapping.source_index]
    ok = np.isfinite(values)
    sums = np.bincount(mapping.target_index[ok], weights=values[ok], minlength=size)
    counts = np.bincount(mapping.target_index[ok], minlength=size)
    out = np.full(size, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


# -- public API --------------------------------------------------------------------------------
def regrid(
    source: xr.Dataset | xr.DataArray,
    target: Grid,
    method: Method = "bilinear",
    *,
    variable: str = VARIABLE,
    source_grid: Grid | None = None,
) -> xr.DataArray:
    """Resample ``source`` (dims ``(..., y, x)``, e.g. ``(time, y, x)``) onto ``target``.

    ``source`` is a product Dataset (``variable`` is taken from it) or a DataArray with a
    ``crs`` coordinate (or give ``source_grid``). The pixel mapping is computed once and
    applied slice by slice, so a lazily opened archive is read one frame at a time.
    Returns dims ``(..., y, x)`` on ``target``'s coordinates, with the source's attributes,
    ``grid_mapping="crs"``, ``regridded_from``/``regrid_method`` and a scalar ``crs``
    coordinate describing the target grid (so :func:`grid_of` works on the result).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    src = source_grid if source_grid is not None else grid_of(source)
    da = source[variable] if isinstance(source, xr.Dataset) else source
    if "y" not in da.dims or "x" not in da.dims:
        raise ValueError(f"source must have 'y' and 'x' dims, has {da.dims}")
    da = da.transpose(..., "y", "x")
    if da.shape[-2:] != src.shape:
        raise ValueError(f"data shape {da.shape[-2:]} does not match the source grid {src.shape}")

    lead_dims = da.dims[:-2]
    lead_shape = da.shape[:-2]
    ny, nx = target.shape
    out_dtype = np.result_type(da.dtype, np.float32)
    out = np.empty((*lead_shape, ny, nx), dtype=out_dtype)

    mapping: PointMapping | _BinMapping
    mapping = _bin_mapping(src, target) if method == "average" else _point_mapping(src, target)
    for idx in np.ndindex(*lead_shape):
        field = np.asarray(da[idx].values, dtype=np.float64)  # one slice in memory at a time
        if method == "average":
            flat = _sample_average(field, mapping, ny * nx)
        else:
            flat = np.full(ny * nx, np.nan)
            sampler = sample_nearest if method == "nearest" else sample_bilinear
            flat[mapping.target_index] = sampler(field, mapping)
        out[idx] = flat.reshape(ny, nx)

    coords: dict[str, xr.Variable | tuple] = {
        name: coord.variable
        for name, coord in da.coords.items()
        if name != "crs" and not {"x", "y"} & set(coord.dims)
    }
    coords["y"] = ("y", np.asarray(target.y, np.float64),
                   {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
    coords["x"] = ("x", np.asarray(target.x, np.float64),
                   {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
    coords["crs"] = ((), np.int32(0), target.cf_grid_mapping_attrs())
    attrs = dict(da.attrs)
    attrs.update(grid_mapping="crs", regridded_from=src.crs_proj, regrid_method=method)
    return xr.DataArray(out, dims=(*lead_dims, "y", "x"), coords=coords, attrs=attrs, name=da.name)


def regrid_dataset(
    source_ds: xr.Dataset,
    target_grid: Grid,
    method: Method = "bilinear",
    *,
    variable: str = VARIABLE,
) -> xr.Dataset:
    """A product Dataset on ``target_grid``, in the archive's layout (``precip`` + ``crs``).

    Same layout as :func:`pipelines.store.frames_to_dataset`, so the result can be stored
    or stacked with the target product's own frames.
    """
    da = regrid(source_ds, target_grid, method, variable=variable)
    crs_attrs = dict(da["crs"].attrs)
    da = da.drop_vars("crs")
    ds = xr.Dataset({variable: da, "crs": ((), np.int32(0), crs_attrs)})
    ds.attrs = dict(source_ds.attrs)
    ds.attrs.update(regridded_from=da.attrs["regridded_from"], regrid_method=method)
    return ds
