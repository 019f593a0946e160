"""Provider units to rain rate in mm/h, with quality control that counts what it changes."""

from __future__ import annotations

import numpy as np

from pipelines.frame import Frame, RawFrame

#: Rain rates above this (mm/h) are treated as clutter/artefacts and masked as nodata.
MAX_RAIN_RATE = 300.0


def dbz_to_rain_rate(dbz: np.ndarray, a: float, b: float) -> np.ndarray:
    """Invert Z = a R^b with Z in mm^6/m^3 (Marshall-Palmer form)."""
    return (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)


def to_rain_rate(raw: RawFrame, source: str, max_rain_rate: float = MAX_RAIN_RATE) -> Frame:
    """Convert one decoded file to mm/h and apply QC (negative -> 0, absurd -> NaN)."""
    data = np.asarray(raw.data, dtype=np.float64)
    attrs = dict(raw.attrs)
    nodata = np.isnan(data)
    if raw.unit == "dBZ":
        if raw.zr_a is None or raw.zr_b is None:
            raise ValueError(f"{source}: dBZ product without a Z-R relation (a, b)")
        rate = dbz_to_rain_rate(data, raw.zr_a, raw.zr_b)
        if raw.threshold is not None:
            rate[data < raw.threshold] = 0.0
        attrs["conversion"] = f"Z = a * R^b with a = {raw.zr_a:g}, b = {raw.zr_b:g} (Z in mm6/m3)"
        attrs["zr_a"], attrs["zr_b"] = float(raw.zr_a), float(raw.zr_b)
    elif raw.unit == "mm":
        if not raw.accutime_minutes:
            raise ValueError(f"{source}: accumulation without an accumulation time")
        rate = data * (60.0 / raw.accutime_minutes)
        attrs["conversion"] = (
            f"accumulation in mm over {raw.accutime_minutes:g} min divided by its duration"
        )
    elif raw.unit == "mm/h":
        rate = data.copy()
        attrs["conversion"] = "none (provider gives mm/h)"
    else:
        raise ValueError(f"{source}: unsupported unit {raw.unit!r} (expected dBZ, mm or mm/h)")
    if raw.accutime_minutes:
        attrs["accumulation_minutes"] = float(raw.accutime_minutes)
    negative = (rate < 0.0) & ~nodata
    absurd = (rate > max_rain_rate) & ~nodata
    rate[negative] = 0.0
    rate[absurd] = np.nan
    qc = {
        "nodata_pixels": int(nodata.sum()),
        "negative_clipped": int(negative.sum()),
        "absurd_masked": int(absurd.sum()),
    }
    return Frame(
        time=raw.time, rain_rate=rate.astype(np.float32), grid=raw.grid, attrs=attrs,
        source=source, qc=qc,
    )
