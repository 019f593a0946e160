"""Synthetic storms: Gaussian rain cells advected by a steering flow, growing and decaying.

Used by tests and by the demo when no real radar is available. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from pipelines.frame import Frame
from pipelines.grid import Grid

SYNTHETIC_CRS = "+proj=laea +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"


def synthetic_grid(shape: tuple[int, int] = (128, 128), pixel_m: float = 1000.0) -> Grid:
    ny, nx = shape
    x = (np.arange(nx) + 0.5) * pixel_m
    y = ((np.arange(ny) + 0.5) * pixel_m)[::-1]
    return Grid(crs_proj=SYNTHETIC_CRS, x=x, y=y)


def synthetic_frames(
    n_frames: int = 36,
    shape: tuple[int, int] = (128, 128),
    step_minutes: int = 5,
    start: str = "2021-07-01T12:00",
    n_cells: int = 8,
    seed: int = 0,
    skip: set[int] | None = None,
) -> list[Frame]:
    """``n_frames`` frames in mm/h; indices in ``skip`` are left out (to make gaps)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    grid = synthetic_grid(shape)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    steering = rng.uniform(-1.5, 1.5, size=2)  # pixels per step
    births = rng.uniform(-0.3 * n_frames, n_frames, size=n_cells)
    lifetimes = rng.uniform(0.5 * n_frames, 1.5 * n_frames, size=n_cells)
    peaks = rng.gamma(2.0, 8.0, size=n_cells) + 2.0  # mm/h
    radii = rng.uniform(0.04, 0.12, size=n_cells) * min(shape)
    y0 = rng.uniform(0, ny, size=n_cells)
    x0 = rng.uniform(0, nx, size=n_cells)
    velocities = steering + rng.normal(0.0, 0.3, size=(n_cells, 2))
    t0 = np.datetime64(start, "s")
    frames = []
    for t in range(n_frames):
        if skip and t in skip:
            continue
        rate = np.zeros(shape)
        for c in range(n_cells):
            age = (t - births[c]) / lifetimes[c]
            if not 0.0 <= age <= 1.0:
                continue
            amplitude = peaks[c] * np.sin(np.pi * age) ** 2  # grows, peaks, decays
            cy = (y0[c] + velocities[c, 0] * t) % ny
            cx = (x0[c] + velocities[c, 1] * t) % nx
            rate += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * radii[c] ** 2))
        rate[rate < 0.05] = 0.0
        frames.append(
            Frame(
                time=t0 + np.timedelta64(step_minutes * 60 * t, "s"),
                rain_rate=rate.astype(np.float32),
                grid=grid,
                attrs={"provider": "nowcast synthetic storm generator", "source_product": "synthetic",
                       "conversion": "none (generated in mm/h)"},
                source=f"synthetic:{seed}:{t}",
            )
        )
    return frames
