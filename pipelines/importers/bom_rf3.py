"""Australian Bureau of Meteorology Rainfields3 netCDF accumulations (pysteps ``import_bom_rf3``)."""

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


def read(path: Path) -> RawFrame:
    with netCDF4.Dataset(path) as nc:
        valid = nc.variables["valid_time"]
        when = netCDF4.num2date(valid[:], valid.units, only_use_cftime_datetimes=False)
        when = np.asarray(when).ravel()[0]
    data, _, meta = pysteps_importers().import_bom_rf3(str(path))
    accutime = float(meta.get("accutime") or 6.0)
    return RawFrame(
        time=np.datetime64(when.replace(tzinfo=None), "s"),
        data=data,
        unit="mm",
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        accutime_minutes=accutime,
        attrs={"provider": meta.get("institution", "Bureau of Meteorology"), "source_product": "Rainfields3"},
    )
