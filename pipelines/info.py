"""Describe what a store holds: products, time range, step, gaps, grid, CRS, size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.grid import Grid
from pipelines.integrity import DamagedData
from pipelines.query import time_step_minutes, utc_text
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
    if product:
        return {"store": store, "products": [product_summary(store, product, storage_options)]}
    summaries, damaged = [], []
    for name in list_products(store, storage_options):
        try:
            summaries.append(product_summary(store, name, storage_options))
        except DamagedData as exc:  # one damaged product is named; the others are still described
            damaged.append({"product": name, "error": str(exc)})
    return {"store": store, "products": summaries, "damaged": damaged}


#: pixels per axis sampled to measure how much of one grid another covers (enough for a percent)
OVERLAP_SAMPLES = 200


def product_overlap(store: str, first: str, second: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Where and when ``second`` can feed a model of ``first``: the time span both cover (and the
    valid times they share), and the share of ``first``'s pixels whose centres lie inside
    ``second``'s grid, with that region's extent in ``first``'s coordinates."""
    from pyproj import Transformer

    archives = [ProductArchive(store, p, storage_options) for p in (first, second)]
    for archive in archives:
        if not archive.exists():
            raise KeyError(f"no product {archive.product!r} in {store} (products: "
                           f"{list_products(store, storage_options)})")
    (ta, tb), (ga, gb) = [a.times() for a in archives], [a.grid() for a in archives]
    start, end = max(ta[0], tb[0]), min(ta[-1], tb[-1])
    overlapping = start <= end
    time = {
        "start": utc_text(start) if overlapping else None,
        "end": utc_text(end) if overlapping else None,
        "hours": float((end - start) / np.timedelta64(3600, "s")) if overlapping else 0.0,
        f"{first}_frames_in_span": int(((ta >= start) & (ta <= end)).sum()) if overlapping else 0,
        "shared_valid_times": int(len(np.intersect1d(ta, tb))),
    }
    rows = np.linspace(0, ga.shape[0] - 1, min(OVERLAP_SAMPLES, ga.shape[0])).round().astype(int)
    cols = np.linspace(0, ga.shape[1] - 1, min(OVERLAP_SAMPLES, ga.shape[1])).round().astype(int)
    x, y = np.meshgrid(ga.x[cols], ga.y[rows])
    bx, by = Transformer.from_crs(ga.crs, gb.crs, always_xy=True).transform(x, y)
    (dx, dy), (xmin, xmax), (ymin, ymax) = gb.pixel_size, sorted(gb.x[[0, -1]]), sorted(gb.y[[0, -1]])
    with np.errstate(invalid="ignore"):  # points off a geostationary disk transform to inf
        inside = (np.isfinite(bx) & np.isfinite(by) & (bx >= xmin - dx / 2) & (bx <= xmax + dx / 2)
                  & (by >= ymin - dy / 2) & (by <= ymax + dy / 2))
    space: dict[str, Any] = {"share_of_first": round(float(inside.mean()), 4)}
    if inside.any():
        space["x_range"] = [float(x[inside].min()), float(x[inside].max())]
        space["y_range"] = [float(y[inside].min()), float(y[inside].max())]
        space["units"] = ga.unit
    return {"first": first, "second": second, "time": time, "space": space}


def holdings(store: str, product: str | None = None, storage_options: dict | None = None) -> str:
    """What the archive holds, in one sentence for an error message: ``product``'s frames, time range
    and step, or (no such product, or none given) every product with its own."""
    def one(name: str) -> str:
        times = ProductArchive(store, name, storage_options).times()
        if not len(times):
            return f"{name}: no frames"
        step = time_step_minutes(times)
        return (f"{name}: {len(times)} frames {utc_text(times[0])} .. {utc_text(times[-1])}"
                + (f" every {step:g} min" if step else ""))

    try:
        if product is not None and ProductArchive(store, product, storage_options).exists():
            return f"{store} holds {one(product)}"
        names = list_products(store, storage_options)
    except Exception:  # an unreadable store: the caller's own error says enough
        return f"{store} could not be read"
    if not names:
        return f"{store} holds no products yet (nowcast ingest adds them)"
    missing = f"no product {product!r}; " if product is not None else ""
    return f"{store}: {missing}products " + "; ".join(one(name) for name in names)
