"""What an importer returns, and what the writer stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.grid import Grid


@dataclass
class RawFrame:
    """One decoded file in the provider's unit; NaN is nodata; row 0 is the northern edge."""

    time: np.datetime64  # valid time, UTC (end of the accumulation for accumulations)
    data: np.ndarray
    unit: str  # "dBZ", "mm" (accumulation) or "mm/h"
    grid: Grid
    accutime_minutes: float | None = None
    zr_a: float | None = None
    zr_b: float | None = None
    threshold: float | None = None  # values below this are "no rain" in the provider's unit
    attrs: dict[str, Any] = field(default_factory=dict)  # provider, source_product, ...


@dataclass
class Frame:
    """One frame ready for the archive: rain rate in mm/h (float32, NaN = nodata)."""

    time: np.datetime64
    rain_rate: np.ndarray
    grid: Grid
    attrs: dict[str, Any]
    source: str
    qc: dict[str, int] = field(default_factory=dict)
