"""KNMI Netherlands radar composites (HDF5 'RAD_NL25_*', accumulations; pysteps ``import_knmi_hdf5``)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import h5py

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import HDF5_MAGIC, decode_attr, pysteps_importers, utc


def sniff(path: Path, head: bytes) -> bool:
    if head[:8] != HDF5_MAGIC:
        return False
    with h5py.File(path, "r") as f:
        return "overview" in f and "image1" in f


def read(path: Path) -> RawFrame:
    with h5py.File(path, "r") as f:
        end = decode_attr(f["overview"].attrs["product_datetime_end"])
        group_name = decode_attr(f["overview"].attrs.get("product_group_name", b""))
    time = utc(datetime.strptime(end.split(".")[0], "%d-%b-%Y;%H:%M:%S"))
    minutes = re.search(r"(\d+)\s*min", path.name + " " + group_name.replace("mi", "min"))
    accutime = float(minutes.group(1)) if minutes else 5.0
    data, _, meta = pysteps_importers().import_knmi_hdf5(str(path), qty="ACRR", accutime=accutime)
    return RawFrame(
        time=time,
        data=data,
        unit="mm",
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        accutime_minutes=accutime,
        attrs={"provider": meta.get("institution", "KNMI"), "source_product": group_name or "KNMI"},
    )
