"""Australian Bureau of Meteorology Rainfields3 netCDF accumulations (pysteps ``import_bom_rf3``).

The grid comes from the file's own x/y pixel centres: pysteps reports their min/max as if
they were the outer edges, which would shift the grid by up to a pixel.
"""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import HDF5_MAGIC, pysteps_importers


def sniff(path: Path, head: bytes) -> bool:
    if head[:8] != HDF5_MAGIC and head[:3] != b"CDF":
        return False
    with netCDF4.Dataset(path) as nc:
        return "precipitation" in nc.variables and "valid_time" in nc.variables


def _time(variable: netCDF4.Variable) -> np.datetime64:
    when = netCDF4.num2date(variable[:], variable.units, only_use_cftime_datetimes=False)
    return np.datetime64(np.asarray(when).ravel()[0].replace(tzinfo=None), "s")


def read(path: Path) -> RawFrame:
    with netCDF4.Dataset(path) as nc:
        valid = _time(nc.variables["valid_time"])
        start = _time(nc.variables["start_time"]) if "start_time" in nc.variables else None
        factor = 1000.0 if getattr(nc.variables["x"], "units", "m") == "km" else 1.0
        x = np.asarray(nc.variables["x"][:], dtype=np.float64) * factor
        y = np.asarray(nc.variables["y"][:], dtype=np.float64) * factor
    data, _, meta = pysteps_importers().import_bom_rf3(str(path))
    data = np.ma.filled(np.ma.asarray(data, dtype=np.float64), np.nan)
    if y[0] < y[-1]:  # the archive's row 0 is the northern edge
        y, data = y[::-1], data[::-1]
    unit = "mm/h" if meta.get("unit") == "mm/h" else "mm"
    accutime = float((valid - start) / np.timedelta64(60, "s")) if start is not None else None
    if unit == "mm" and not accutime:
        raise ValueError(f"{path.name}: accumulation without start_time, cannot convert to mm/h")
    return RawFrame(
        time=valid,
        data=data,
        unit=unit,
        grid=Grid(crs_proj=" ".join(str(meta["projection"]).split()), x=np.round(x, 3), y=np.round(y, 3)),
        accutime_minutes=accutime if unit == "mm" else None,
        attrs={"provider": meta.get("institution", "Bureau of Meteorology"), "source_product": "Rainfields3"},
    )
