"""The one CF layout of rain rate: the archive, backfilled forecasts and the service's NetCDF share it.

``precip(..., y, x)`` in mm/h (``rainfall_rate``), pixel-centre ``x``/``y`` with their CF
attributes and a scalar ``crs`` grid-mapping variable when the grid is known (row and column
indices otherwise), and ``Conventions: CF-1.10``. Callers add their own time axes and attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from pipelines.grid import Grid

CONVENTIONS = "CF-1.10"
#: the rain-rate variable's name in every dataset
VARIABLE = "precip"


def rain_rate_dataset(
    precip: Any, dims: tuple[str, ...], coords: dict[str, tuple], grid: Grid | None, long_name: str,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A Dataset with ``precip`` (dims ending in y, x; numpy or dask) on ``grid`` plus ``coords``."""
    if dims[-2:] != ("y", "x"):
        raise ValueError(f"precip's last dimensions must be (y, x), got {dims}")
    ny, nx = precip.shape[-2:]
    variable = {"standard_name": "rainfall_rate", "long_name": long_name, "units": "mm/h"}
    if grid is not None:
        coords = {**coords, "y": ("y", grid.y, grid.coordinate_attrs("y")),
                  "x": ("x", grid.x, grid.coordinate_attrs("x"))}
        variable["grid_mapping"] = "crs"
    else:
        coords = {**coords, "y": ("y", np.arange(ny), {"long_name": "row index"}),
                  "x": ("x", np.arange(nx), {"long_name": "column index"})}
    data = {VARIABLE: (dims, precip, variable)}
    if grid is not None:
        data["crs"] = ((), np.int32(0), grid.cf_grid_mapping_attrs())
    return xr.Dataset(data, coords=coords, attrs={"Conventions": CONVENTIONS, **(attrs or {})})
