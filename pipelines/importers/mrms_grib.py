"""NOAA MRMS precipitation rate as GRIB2 (pysteps ``import_mrms_grib``, needs pygrib).

MRMS lives on a regular latitude/longitude grid (0.01 degrees over CONUS); the archive keeps
that native grid, with CF longitude/latitude coordinates, rather than resampling at ingest:
``pipelines.regrid`` puts it on any projected grid when a model needs one. The pixel centres
come from the message's first/last grid points (pysteps treats them as edges).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import pysteps_importers


def sniff(path: Path, head: bytes) -> bool:
    return head[:4] == b"GRIB" or (head[:2] == b"\x1f\x8b" and "grib" in path.name.lower())


def read(path: Path) -> RawFrame:
    import pygrib

    with pygrib.open(str(path)) as grbs:
        message = grbs.message(1)
        valid = message.validDate
        lat0, lat1 = message["latitudeOfFirstGridPointInDegrees"], message["latitudeOfLastGridPointInDegrees"]
        lon0, lon1 = message["longitudeOfFirstGridPointInDegrees"], message["longitudeOfLastGridPointInDegrees"]
        ni, nj = message["Ni"], message["Nj"]
    # window_size=1 keeps the native grid (pysteps' default of 4 block-averages it)
    data, _, meta = pysteps_importers().import_mrms_grib(str(path), window_size=1)
    lon = (np.linspace(lon0, lon1, ni) + 180.0) % 360.0 - 180.0
    lat = np.linspace(lat0, lat1, nj)
    if lat[0] < lat[-1]:  # the archive's row 0 is the northern edge
        lat, data = lat[::-1], data[::-1]
    return RawFrame(
        time=np.datetime64(valid.replace(tzinfo=None), "s"),
        data=np.asarray(data, dtype=np.float64),
        unit="mm/h",
        grid=Grid(crs_proj=" ".join(str(meta["projection"]).split()), x=np.round(lon, 6), y=np.round(lat, 6)),
        attrs={"provider": meta.get("institution", "NOAA NSSL MRMS"), "source_product": "MRMS PrecipRate"},
    )
