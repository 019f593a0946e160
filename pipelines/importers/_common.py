"""Helpers shared by importers: quiet pysteps import, UTC times, HDF5 attributes, output checks."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from pipelines.frame import RawFrame
from pipelines.pysteps_import import quiet_import

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@cache
def pysteps_importers() -> ModuleType:
    """``pysteps.io.importers`` without the banner pysteps prints on import."""
    return quiet_import("pysteps.io.importers")


def utc(dt: datetime) -> np.datetime64:
    """A naive UTC datetime64[s] (the archive's time type)."""
    return np.datetime64(dt.replace(tzinfo=None), "s")


def decode_attr(value: object) -> str:
    """HDF5 attributes come back as bytes, numpy bytes or 1-element arrays."""
    if isinstance(value, np.ndarray):
        value = value.ravel()[0]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return str(value)


class InvalidFrameError(ValueError):
    """An importer decoded a file into something the archive cannot take (see ``check_raw_frame``)."""


def check_raw_frame(raw: RawFrame, path: str | Path) -> RawFrame:
    """The checks every importer's output passes, applied once by ``read_file`` (like pysteps'
    import post-processing): a 2-D image, a grid of the same shape (pixel centres finite, x west to
    east, y north to south), no +/-inf where there is rain (NaN, or a masked pixel, is nodata), a
    valid time. Raises ``InvalidFrameError`` (a ``ValueError``) naming the file and the problem.
    """
    name = Path(path).name
    data = raw.data
    if not isinstance(data, np.ndarray):
        raise InvalidFrameError(f"{name}: expected a 2-D image, got {type(data).__name__}")
    if data.ndim != 2 or min(data.shape) < 2:
        raise InvalidFrameError(f"{name}: expected a 2-D image, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise InvalidFrameError(f"{name}: expected numeric values, got dtype {data.dtype}")
    grid_shape = (np.size(raw.grid.y), np.size(raw.grid.x))
    if grid_shape != data.shape:
        raise InvalidFrameError(
            f"{name}: grid is {grid_shape[0]}x{grid_shape[1]} (rows x columns) "
            f"but the image is {data.shape[0]}x{data.shape[1]}"
        )
    x, y = np.asarray(raw.grid.x, dtype=np.float64), np.asarray(raw.grid.y, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InvalidFrameError(f"{name}: grid coordinates are not all finite")
    if not (np.all(np.diff(x) > 0) and np.all(np.diff(y) < 0)):
        raise InvalidFrameError(
            f"{name}: grid must run west to east and north to south (row 0 the northern edge), "
            f"got x {x[0]:g} .. {x[-1]:g}, y {y[0]:g} .. {y[-1]:g}"
        )
    infinite = np.isinf(np.ma.getdata(data)) & ~np.ma.getmaskarray(data)
    if infinite.any():
        row, col = np.argwhere(infinite)[0]
        raise InvalidFrameError(
            f"{name}: {int(infinite.sum())} infinite value(s) in the image (first at row {row}, column {col}); "
            "nodata must be NaN"
        )
    time = raw.time
    if not isinstance(time, np.datetime64) or np.isnat(time):
        raise InvalidFrameError(f"{name}: no valid time (got {time!r})")
    return raw
