"""Any CF-netCDF time series of rain rate, accumulation or reflectivity, many frames per file.

The variable is found by its CF ``standard_name`` (``KNOWN_VARIABLES``), the grid from its
projection coordinates (``projection_x/y_coordinate``, or ``axis`` X/Y; 1-D longitude/latitude
also works) and the CRS from its ``grid_mapping`` (``pyproj.CRS.from_cf``), the times from the CF
time coordinate, nodata from ``_FillValue``/``missing_value`` (xarray's masking). Decoding is
xarray's, as the ecosystem reads CF. This importer is the one that returns many frames per file:
``frame_count`` and ``read_frames(path, start, stop)`` let ingest read a long file in slices, so
memory stays bounded whatever the file's length.

Reflectivity is converted with the Z-R relation ``Z = a R^b`` (Marshall-Palmer a = 200, b = 1.6
unless ``nowcast ingest --zr A B`` says otherwise); reflectivity at or below ``DRY_DBZ`` (0 dBZ, the
lowest code of radars that clip at zero) is no rain.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import HDF5_MAGIC

#: CF standard names this importer reads, and the kind of quantity each is
KNOWN_VARIABLES: dict[str, str] = {
    "rainfall_rate": "rate",
    "lwe_precipitation_rate": "rate",
    "precipitation_flux": "rate",
    "lwe_thickness_of_precipitation_amount": "accumulation",
    "precipitation_amount": "accumulation",
    "thickness_of_rainfall_amount": "accumulation",
    "equivalent_reflectivity_factor": "reflectivity",
}
#: provider units -> factor to mm/h (rates) or mm (accumulations)
RATE_UNITS = {"mm/h": 1.0, "mm h-1": 1.0, "mm hr-1": 1.0, "mm/hr": 1.0, "kg m-2 s-1": 3600.0,
              "mm s-1": 3600.0, "mm/s": 3600.0, "m s-1": 3.6e6, "kg m-2 h-1": 1.0}
AMOUNT_UNITS = {"mm": 1.0, "kg m-2": 1.0, "m": 1000.0}
MARSHALL_PALMER = (200.0, 1.6)
DRY_DBZ = 0.0


class CFError(ValueError):
    """The file is netCDF but lacks what a radar time series needs; the message names what."""


def sniff(path: Path, head: bytes) -> bool:
    if head[:8] != HDF5_MAGIC and head[:3] != b"CDF":
        return False
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return any(getattr(v, "standard_name", None) in KNOWN_VARIABLES for v in nc.variables.values())


def _open(path: Path):
    import xarray as xr

    try:
        return xr.open_dataset(path, engine="netcdf4", decode_times=True, mask_and_scale=True)
    except Exception as exc:
        raise CFError(f"{path.name}: not a readable netCDF file ({type(exc).__name__}: {exc})") from exc


def _variable(ds, path: Path):
    for name, var in ds.data_vars.items():
        if var.attrs.get("standard_name") in KNOWN_VARIABLES:
            return name, var
    raise CFError(f"{path.name}: no known variable: none has a standard_name among "
                  f"{', '.join(KNOWN_VARIABLES)} (variables: {', '.join(map(str, ds.data_vars)) or 'none'})")


def _time_dim(var, path: Path) -> str:
    for dim in var.dims:
        coord = var.coords.get(dim)
        if coord is not None and (np.issubdtype(coord.dtype, np.datetime64)
                                  or coord.attrs.get("standard_name") == "time" or coord.attrs.get("axis") == "T"):
            if not np.issubdtype(coord.dtype, np.datetime64):
                raise CFError(f"{path.name}: time coordinate {dim!r} could not be decoded to dates "
                              f"(units {coord.attrs.get('units')!r})")
            return dim
    raise CFError(f"{path.name}: no time axis: variable {var.name!r} has dimensions {var.dims}, none a CF time "
                  "coordinate (standard_name time, axis T, or units 'minutes since ...')")


def _axis(var, which: str):
    names = {"X": ("projection_x_coordinate", "longitude", "grid_longitude"),
             "Y": ("projection_y_coordinate", "latitude", "grid_latitude")}[which]
    for dim in var.dims:
        coord = var.coords.get(dim)
        if coord is not None and (coord.attrs.get("axis") == which or coord.attrs.get("standard_name") in names):
            return dim, coord
    return None, None


def _crs_proj(ds, var, x_coord, path: Path) -> str:
    from pyproj import CRS

    mapping = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    if mapping:
        if mapping not in ds.variables:
            raise CFError(f"{path.name}: grid_mapping {mapping!r} names no variable in the file")
        try:
            crs = CRS.from_cf(dict(ds[mapping].attrs))
        except Exception as exc:
            raise CFError(f"{path.name}: grid_mapping {mapping!r} is not a usable CF grid mapping ({exc})") from exc
        with warnings.catch_warnings():  # PROJ strings lose datum detail the archive does not need
            warnings.simplefilter("ignore", UserWarning)
            return crs.to_proj4()
    if x_coord.attrs.get("standard_name") == "longitude":
        return "+proj=longlat +datum=WGS84 +no_defs"
    raise CFError(f"{path.name}: no usable grid: projection coordinates without a grid_mapping attribute")


class Series:
    """One open file: the variable, its time axis and grid, ready to read slices of frames."""

    def __init__(self, path: Path):
        self.path = path
        self.ds = _open(path)
        try:
            self.name, var = _variable(self.ds, path)
            self.kind = KNOWN_VARIABLES[var.attrs["standard_name"]]
            self.time_dim = _time_dim(var, path)
            x_dim, x = _axis(var, "X")
            y_dim, y = _axis(var, "Y")
            if x is None or y is None:
                raise CFError(f"{path.name}: no usable grid: variable {self.name!r} has no 1-D x/y coordinates "
                              "(projection_x/y_coordinate, axis X/Y, or longitude/latitude)")
            self.var = var.transpose(self.time_dim, y_dim, x_dim)
            factor = 1000.0 if x.attrs.get("units") == "km" else 1.0
            xs, ys = np.asarray(x, dtype=np.float64) * factor, np.asarray(y, dtype=np.float64) * factor
            self.flip_x, self.flip_y = xs[0] > xs[-1], ys[0] < ys[-1]  # the archive: west to east, north to south
            self.grid = Grid(crs_proj=" ".join(_crs_proj(self.ds, var, x, path).split()),
                             x=np.round(xs[::-1] if self.flip_x else xs, 3),
                             y=np.round(ys[::-1] if self.flip_y else ys, 3))
            self.times = self.var[self.time_dim].values.astype("datetime64[s]")
            self.unit, self.scale, self.accutime = self._unit()
        except Exception:
            self.ds.close()
            raise

    def _unit(self) -> tuple[str, float, float | None]:
        units = str(self.var.attrs.get("units", "")).strip()
        if self.kind == "reflectivity":
            if units.lower() not in ("dbz", "dbz "):
                raise CFError(f"{self.path.name}: reflectivity in {units!r}; expected dBZ")
            return "dBZ", 1.0, None
        if self.kind == "rate":
            if units not in RATE_UNITS:
                raise CFError(f"{self.path.name}: rain rate in unknown units {units!r} "
                              f"(known: {', '.join(RATE_UNITS)})")
            return "mm/h", RATE_UNITS[units], None
        if units not in AMOUNT_UNITS:
            raise CFError(f"{self.path.name}: accumulation in unknown units {units!r} "
                          f"(known: {', '.join(AMOUNT_UNITS)})")
        return "mm", AMOUNT_UNITS[units], self._accumulation_minutes()

    def _accumulation_minutes(self) -> float:
        """The accumulation period: from the time bounds, else the (regular) spacing of the times."""
        bounds = self.ds[self.time_dim].attrs.get("bounds")
        if bounds and bounds in self.ds.variables:
            widths = np.diff(self.ds[bounds].values.astype("datetime64[s]"), axis=-1).ravel()
            if len(widths) and np.all(widths == widths[0]) and widths[0] > np.timedelta64(0, "s"):
                return float(widths[0] / np.timedelta64(60, "s"))
        steps = np.unique(np.diff(self.times))
        if len(steps) == 1 and steps[0] > np.timedelta64(0, "s"):
            return float(steps[0] / np.timedelta64(60, "s"))
        raise CFError(f"{self.path.name}: accumulation without time bounds or a regular time step: "
                      "cannot convert to mm/h")

    def __len__(self) -> int:
        return len(self.times)

    def read(self, start: int, stop: int | None) -> list[RawFrame]:
        """Frames ``start:stop`` in the provider's unit (NaN = nodata), row 0 the northern edge."""
        block = np.asarray(self.var.isel({self.time_dim: slice(start, stop)}).values, dtype=np.float64)
        if self.flip_y:
            block = block[:, ::-1]
        if self.flip_x:
            block = block[:, :, ::-1]
        a, b = MARSHALL_PALMER
        attrs = {"provider": self.ds.attrs.get("institution", "unknown"),
                 "source_product": self.ds.attrs.get("title") or self.var.attrs.get("long_name") or self.name,
                 "cf_variable": self.name}
        frames = []
        for time, data in zip(self.times[start:stop], block, strict=True):
            frames.append(RawFrame(
                time=time, data=np.ascontiguousarray(data) * self.scale, unit=self.unit, grid=self.grid,
                accutime_minutes=self.accutime,
                zr_a=a if self.unit == "dBZ" else None, zr_b=b if self.unit == "dBZ" else None,
                threshold=np.nextafter(DRY_DBZ, np.inf) if self.unit == "dBZ" else None, attrs=attrs,
            ))
        return frames

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> Series:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_count(path: Path) -> int:
    with Series(path) as series:
        return len(series)


def read_frames(path: Path, start: int = 0, stop: int | None = None) -> list[RawFrame]:
    with Series(path) as series:
        return series.read(start, stop)


def read(path: Path) -> RawFrame:
    """The file's one frame; a file of many is read with ``read_frames`` (ingest does)."""
    frames = read_frames(path, 0, None)
    if len(frames) != 1:
        raise CFError(f"{path.name}: holds {len(frames)} frames; read it with read_frames")
    return frames[0]
