"""Write an MRMS-like GRIB2 message with eccodes: ``python make_mrms_grib.py FIELD.npy OUT HOUR``.

Run as a separate process on purpose: eccodes' wheel bundles native libraries that break
pyproj's PROJ database when both load into one interpreter (eccodes first).
"""

from __future__ import annotations

import sys

import eccodes
import numpy as np


def write_mrms(path: str, hour: int, field: np.ndarray) -> None:
    """A regular 0.01-degree lat/lon message, north-west corner first, -3 = no coverage."""
    nj, ni = field.shape
    handle = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        for key, value in {
            "Ni": ni, "Nj": nj,
            "latitudeOfFirstGridPointInDegrees": 40.005, "longitudeOfFirstGridPointInDegrees": 260.005,
            "latitudeOfLastGridPointInDegrees": 40.005 - 0.01 * (nj - 1),
            "longitudeOfLastGridPointInDegrees": 260.005 + 0.01 * (ni - 1),
            "iDirectionIncrementInDegrees": 0.01, "jDirectionIncrementInDegrees": 0.01,
            "jScansPositively": 0, "dataDate": 20190601, "dataTime": hour * 100,
            "bitsPerValue": 16,
        }.items():
            eccodes.codes_set(handle, key, value)
        eccodes.codes_set_values(handle, field.ravel().astype(np.float64))
        with open(path, "wb") as f:
            eccodes.codes_write(handle, f)
    finally:
        eccodes.codes_release(handle)


if __name__ == "__main__":
    write_mrms(sys.argv[2], int(sys.argv[3]), np.load(sys.argv[1]))
