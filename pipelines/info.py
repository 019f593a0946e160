"""Describe what a store holds: products, time range, step, gaps, grid, CRS, size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.grid import Grid
from pipelines.query import time_step_minutes
from pipelines.store import ProductArchive, list_products


def find_gaps(times: np.ndarray, step_minutes: float | None) -> list[dict[str, Any]]:
    """Intervals longer than one step, with how many frames are missing in each."""
    if step_minutes is None:
        return []
    seconds = times.astype("datetime64[s]").astype(np.int64)
    step = int(round(step_minutes * 60))
    gaps = []
    for i in np.nonzero(np.diff(seconds) > step)[0]:
        gaps.append(
            {
                "after": str(times[i].astype("datetime64[s]")) + "Z",
                "before": str(times[i + 1].astype("datetime64[s]")) + "Z",
                "missing_frames": int((seconds[i + 1] - seconds[i]) // step - 1),
            }
        )
    return gaps


def product_summary(store: str, product: str, storage_options: dict | None = None) -> dict[str, Any]:
    archive = ProductArchive(store, product, storage_options)
    if not archive.exists():
        raise KeyError(f"no product {product!r} in {store} (products: {list_products(store, storage_options)})")
    with archive.open() as ds:
        times = ds["time"].values.astype("datetime64[s]")
        grid = Grid.from_dataset(ds)
        attrs = dict(ds.attrs)
        wkt = str(ds["crs"].attrs.get("crs_wkt", ""))
    step = time_step_minutes(times)
    dx, dy = grid.pixel_size
    return {
        "product": product,
        "frames": int(len(times)),
        "start": str(times[0]) + "Z" if len(times) else None,
        "end": str(times[-1]) + "Z" if len(times) else None,
        "step_minutes": step,
        "gaps": find_gaps(times, step),
        "grid": {
            "ny": grid.shape[0],
            "nx": grid.shape[1],
            "units": grid.unit,  # "m", or "degrees" for a native lat/lon grid (MRMS)
            "dx_m": dx,
            "dy_m": dy,
            "x_range_m": [float(grid.x.min()), float(grid.x.max())],
            "y_range_m": [float(grid.y.min()), float(grid.y.max())],
        },
        "crs": {"proj4": grid.crs_proj, "wkt": wkt},
        "size_on_disk_bytes": archive.size_on_disk(),
        "attrs": {k: attrs[k] for k in ("provider", "source_product", "conversion") if k in attrs},
    }


def store_summary(store: str, product: str | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """Every product's summary; a store that does not exist is an error, not an empty store."""
    if "://" not in store and not Path(store).exists():
        raise KeyError(f"no store at {store}: nothing has been ingested there (nowcast ingest --store {store} ...)")
    products = [product] if product else list_products(store, storage_options)
    return {"store": store, "products": [product_summary(store, p, storage_options) for p in products]}
