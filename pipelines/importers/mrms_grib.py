"""NOAA MRMS precipitation rate as GRIB2 (pysteps ``import_mrms_grib``, needs pygrib)."""

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
        valid = grbs.message(1).validDate
    # window_size=1 keeps the native 1 km grid (pysteps' default of 4 block-averages it)
    data, _, meta = pysteps_importers().import_mrms_grib(str(path), window_size=1)
    return RawFrame(
        time=np.datetime64(valid.replace(tzinfo=None), "s"),
        data=data,
        unit="mm/h",
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        attrs={"provider": meta.get("institution", "NOAA NSSL MRMS"), "source_product": "MRMS PrecipRate"},
    )
