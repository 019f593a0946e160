"""NWC SAF Convective Rainfall Rate from geostationary satellites (netCDF; pysteps ``import_saf_crri``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import netCDF4

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import HDF5_MAGIC, pysteps_importers, utc


def sniff(path: Path, head: bytes) -> bool:
    if head[:8] != HDF5_MAGIC and head[:3] != b"CDF":
        return False
    with netCDF4.Dataset(path) as nc:
        return "crr_intensity" in nc.variables


def read(path: Path) -> RawFrame:
    with netCDF4.Dataset(path) as nc:
        stamp = nc.getncattr("nominal_product_time")
    time = utc(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    data, _, meta = pysteps_importers().import_saf_crri(str(path))
    return RawFrame(
        time=time,
        data=data,
        unit="mm/h",
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        attrs={"provider": meta.get("institution", "NWC SAF"), "source_product": "NWC SAF CRR"},
    )
