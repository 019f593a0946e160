"""What a verification case is, shared by every scorer (``evaluate``, ``evaluate --forecasts`` and
live verification): the dry-case rule, the pixel size FSS windows are measured in, and the
product's times, grid and step. Kept free of the models (no torch) so that a verification pass
starts in a fraction of a second."""

from __future__ import annotations

import numpy as np

from pipelines.grid import Grid
from pipelines.query import time_step_minutes
from pipelines.store import ProductArchive

DRY_THRESHOLD_MM_H = 0.1
MIN_WET_FRACTION = 0.01


def is_dry(last: np.ndarray) -> bool:
    """The dry-case rule, one for every scorer so all skip the same cases:
    under MIN_WET_FRACTION of the valid pixels of the last observed frame reach DRY_THRESHOLD_MM_H."""
    valid = np.isfinite(last)
    return bool(not valid.any() or np.mean(last[valid] >= DRY_THRESHOLD_MM_H) < MIN_WET_FRACTION)


def archive_layout(archive: ProductArchive) -> tuple[np.ndarray, Grid, float]:
    """A product's times, grid and step, refusing one with too few frames to have a step."""
    with archive.open() as ds:
        times = ds["time"].values.astype("datetime64[s]")
        grid = Grid.from_dataset(ds)
    step = time_step_minutes(times)
    if step is None:
        raise ValueError(f"product {archive.product!r} has fewer than two frames")
    return times, grid, step


def pixel_size_km(grid: Grid) -> float:
    """Mean pixel edge in km (degrees as 111.2 km): FSS windows are given in km."""
    dx, dy = grid.pixel_size
    size = (dx + dy) / 2
    return size * 111.2 if grid.is_geographic else size / 1000.0
