"""Projected grids: pixel-centre coordinates in metres plus a CRS, and their CF encoding."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import CRS


def _proj_km_to_m(proj: str) -> str:
    """Some providers (KNMI) give the ellipsoid axes in km; PROJ expects metres."""

    def fix(match: re.Match[str]) -> str:
        value = float(match.group(2))
        return f"+{match.group(1)}={value * 1000.0 if value < 1.0e5 else value:g}"

    return re.sub(r"\+(a|b|R)=([0-9.eE+-]+)", fix, proj)


@dataclass(frozen=True)
class Grid:
    """A regular projected grid; ``y`` runs north to south (row 0 is the top of the image)."""

    crs_proj: str
    x: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.y), len(self.x))

    @property
    def crs(self) -> CRS:
        return CRS.from_proj4(self.crs_proj)

    @property
    def pixel_size(self) -> tuple[float, float]:
        return (float(abs(self.x[1] - self.x[0])), float(abs(self.y[1] - self.y[0])))

    @classmethod
    def from_pysteps_metadata(cls, shape: tuple[int, int], metadata: dict[str, Any]) -> Grid:
        """Pixel centres from pysteps' edge coordinates (x1, x2, y1, y2) and pixel sizes."""
        factor = 1000.0 if metadata.get("cartesian_unit", "m") == "km" else 1.0
        proj = str(metadata["projection"]).strip()
        if factor != 1.0:
            proj = _proj_km_to_m(proj)
        ny, nx = shape
        x1, x2 = float(metadata["x1"]) * factor, float(metadata["x2"]) * factor
        y1, y2 = float(metadata["y1"]) * factor, float(metadata["y2"]) * factor
        dx, dy = (x2 - x1) / nx, (y2 - y1) / ny
        x = x1 + (np.arange(nx) + 0.5) * dx
        y = y2 - (np.arange(ny) + 0.5) * dy
        return cls(crs_proj=" ".join(proj.split()), x=np.round(x, 3), y=np.round(y, 3))

    def same_as(self, other: Grid) -> bool:
        """Same shape, same CRS and pixel centres within a thousandth of a pixel."""
        if self.shape != other.shape:
            return False
        if not self.crs.equals(other.crs, ignore_axis_order=True):
            return False
        tol = 1e-3 * min(self.pixel_size)
        return bool(np.allclose(self.x, other.x, atol=tol) and np.allclose(self.y, other.y, atol=tol))

    @property
    def is_geographic(self) -> bool:
        return bool(self.crs.is_geographic)

    @property
    def unit(self) -> str:
        return "degrees" if self.is_geographic else "m"

    def coordinate_attrs(self, axis: str) -> dict[str, str]:
        """CF attributes of the x or y coordinate: projected metres, or longitude/latitude."""
        if self.is_geographic:
            name, units = ("longitude", "degrees_east") if axis == "x" else ("latitude", "degrees_north")
        else:
            name, units = f"projection_{axis}_coordinate", "m"
        return {"standard_name": name, "units": units, "axis": axis.upper()}

    def describe(self) -> str:
        dx, dy = self.pixel_size
        return (
            f"{self.shape[0]}x{self.shape[1]} pixels of {dx:g}x{dy:g} {self.unit}, "
            f"x {self.x[0]:.0f}..{self.x[-1]:.0f}, y {self.y[0]:.0f}..{self.y[-1]:.0f}, "
            f"CRS '{self.crs_proj}'"
        )

    def cf_grid_mapping_attrs(self) -> dict[str, Any]:
        """CF grid_mapping attributes (with crs_wkt and the PROJ string) for the ``crs`` variable."""
        crs = self.crs
        try:
            with warnings.catch_warnings():  # PROJ notes what CF cannot express; WKT keeps it
                warnings.simplefilter("ignore", UserWarning)
                attrs = crs.to_cf()
        except Exception:  # some PROJ strings have no CF name; WKT still describes them
            attrs = {}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        attrs["crs_wkt"] = crs.to_wkt()
        attrs["spatial_ref"] = attrs["crs_wkt"]
        attrs["proj4"] = self.crs_proj
        return attrs

    @classmethod
    def from_dataset(cls, ds: Any) -> Grid:
        """The grid of a stored product (an xarray Dataset with x, y and a ``crs`` variable)."""
        return cls(
            crs_proj=str(ds["crs"].attrs["proj4"]),
            x=np.asarray(ds["x"].values, dtype=np.float64),
            y=np.asarray(ds["y"].values, dtype=np.float64),
        )
