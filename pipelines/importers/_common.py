"""Helpers shared by importers: quiet pysteps import, UTC times, HDF5 attributes."""

from __future__ import annotations

import contextlib
import io
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@cache
def pysteps_importers() -> ModuleType:
    """``pysteps.io.importers`` without the banner pysteps prints on import."""
    with contextlib.redirect_stdout(io.StringIO()):
        from pysteps.io import importers
    return importers


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


def require_finite_grid(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim != 2 or min(data.shape) < 2:
        raise ValueError(f"{path.name}: expected a 2-D image, got shape {data.shape}")
    return data
