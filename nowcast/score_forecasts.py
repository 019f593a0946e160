"""``nowcast evaluate --forecasts``: score stored forecasts (``nowcast backfill``) against the archive.

A backfilled year is verified without rerunning any model: each forecast store (one per model)
is checked against the product it was made from, the init times ``done`` in every store are the
candidate cases, and each case pairs the stored forecast with the frames later observed at
init + k * step. Cases are scored exactly as ``nowcast.evaluate`` scores a model run (the same
dry rule, ``LeadTimeVerifier`` and report files), so the two reports compare directly. A case
whose observations are not all in the archive yet is skipped and counted as awaiting them: a
later run, after more frames are ingested, scores it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from nowcast.backfill import open_forecasts
from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.evaluate import Case, report_header, write_outputs
from nowcast.verification import LeadTimeVerifier
from pipelines.grid import Grid
from pipelines.query import centre_crop, parse_utc, utc_text
from pipelines.store import ProductArchive

#: what a forecast store must carry to be scored
REQUIRED_ATTRS = ("model", "product", "step_minutes")


def open_forecast_store(path: str) -> xr.Dataset:
    """A backfill forecast store, or a clear error saying why ``path`` is not one."""
    try:
        ds = open_forecasts(path)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise FileNotFoundError(f"no forecast store at {path} (nowcast backfill makes one)") from exc
    except ValueError as exc:  # a Zarr group, but not one written whole by backfill (no consolidated metadata)
        raise ValueError(f"{path} is not a nowcast backfill forecast store ({exc})") from exc
    missing = [name for name in ("precip", "done") if name not in ds] + [
        f"attribute {a!r}" for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        ds.close()
        raise ValueError(f"{path} is not a nowcast backfill forecast store: it lacks {', '.join(missing)}")
    return ds


def forecast_labels(paths: list[str], models: list[str]) -> list[str]:
    """The model's name; ``name (store)`` where two stores hold the same model, as evaluate labels
    two checkpoints of one architecture."""
    labels = []
    for path, model in zip(paths, models, strict=True):
        label = model
        if models.count(model) > 1:
            label = f"{model} ({Path(path.rstrip('/')).name})"
        if label in labels:  # same store name in two folders
            label = f"{model} ({path})"
        if label in labels:
            raise ValueError(f"forecast store {path} is given twice")
        labels.append(label)
    return labels


def check_made_from(path: str, ds: xr.Dataset, product: str, store: str, step: float, grid: Grid) -> None:
    """Refuse a forecast store that was not made from ``product`` in ``store`` (name, step, grid):
    scoring it against these frames would compare forecasts with another product's observations."""
    made_from = ds.attrs["product"]
    if made_from != product:
        raise ValueError(f"{path} holds forecasts of product {made_from!r}, not {product!r}")
    store_step = float(ds.attrs["step_minutes"])
    if abs(store_step - step) > 1e-6:
        raise ValueError(f"{path} was made at {store_step:g}-minute steps; {product!r} in {store} has frames "
                         f"{step:g} minutes apart")
    shape = (ds.sizes["y"], ds.sizes["x"])
    if shape != grid.shape:
        raise ValueError(f"{path} is on a {shape[0]}x{shape[1]} grid; {product!r} in {store} is on "
                         f"{grid.shape[0]}x{grid.shape[1]}")
    if not Grid.from_dataset(ds).same_as(grid):
        raise ValueError(f"{path} is on another {shape[0]}x{shape[1]} grid than {product!r} in {store} "
                         "(different projection or pixel coordinates)")
    leads = ds["lead_time"].values.astype("timedelta64[s]").astype(np.int64)
    expected = np.round(step * 60 * np.arange(1, len(leads) + 1)).astype(np.int64)
    if not np.array_equal(leads, expected):
        raise ValueError(f"{path}'s lead times are not whole steps of {step:g} minutes")


def done_init_times(ds: xr.Dataset) -> np.ndarray:
    """The init times whose frames are written (``done``): never half-written ones."""
    inits = ds["init_time"].values.astype("datetime64[s]")
    return inits[ds["done"].values.astype(bool)]


def evaluate_forecasts(
    store: str, forecasts: list[str], out: str | Path, start: str | None = None, end: str | None = None,
    crop: int | None = None, stride: int = 1, lead_steps: int | None = None,
    on_case: Callable[[], None] | None = None, total: Callable[[int], None] | None = None,
    product: str | None = None,
) -> dict[str, Any]:
    """Verify forecast stores against the archive; the report is ``nowcast.evaluate``'s, plus
    ``forecasts`` (per label: path, model, init times done) and ``n_cases_awaiting_observations``.

    ``product``: the product to verify against; by default the one the stores were made from.
    """
    if not forecasts:
        raise ValueError("give at least one forecast store (--forecasts)")
    paths = [str(p) for p in forecasts]
    opened: list[xr.Dataset] = []
    try:
        for path in paths:
            opened.append(open_forecast_store(path))
        return _evaluate(store, paths, opened, Path(out), start, end, crop, stride, lead_steps, on_case, total,
                         product)
    finally:
        for ds in opened:
            ds.close()


def _evaluate(
    store: str, paths: list[str], opened: list[xr.Dataset], out: Path, start: str | None, end: str | None,
    crop: int | None, stride: int, lead_steps: int | None, on_case: Callable[[], None] | None,
    total: Callable[[int], None] | None, product: str | None,
) -> dict[str, Any]:
    if product is None:
        made_from = sorted({ds.attrs["product"] for ds in opened})
        if len(made_from) > 1:
            raise ValueError(f"the forecast stores were made from different products ({', '.join(made_from)}); "
                             "score them one product at a time")
        product = made_from[0]
    archive = ProductArchive(store, product)
    if not archive.exists():
        raise KeyError(f"no product {product!r} in {store} (the forecasts were made from {product!r})")
    times, grid, step = archive_layout(archive)
    for path, ds in zip(paths, opened, strict=True):
        check_made_from(path, ds, product, store, step, grid)
    labels = forecast_labels(paths, [ds.attrs["model"] for ds in opened])
    held = min(ds.sizes["lead_time"] for ds in opened)
    leads = lead_steps or held
    if leads > held:
        short = next(p for p, ds in zip(paths, opened, strict=True) if ds.sizes["lead_time"] == held)
        raise ValueError(f"{short} holds {held} lead steps; --lead-steps {leads} asks for more")

    # cases: init times done in every store, inside [start, end], every stride-th
    done = {label: done_init_times(ds) for label, ds in zip(labels, opened, strict=True)}
    inits = reduce(np.intersect1d, done.values())
    first, last = parse_utc(start), parse_utc(end)
    if first is not None:
        inits = inits[inits >= first]
    if last is not None:
        inits = inits[inits <= last]
    inits = inits[:: max(1, stride)]
    if total:
        total(len(inits))

    frame_index = {t: i for i, t in enumerate(times.astype(np.int64))}
    store_index = [{t: i for i, t in enumerate(ds["init_time"].values.astype("datetime64[s]").astype(np.int64))}
                   for ds in opened]
    step_s = int(round(step * 60))
    ys, xs = centre_crop(grid.shape, crop)
    km = pixel_size_km(grid)
    verifiers = {label: LeadTimeVerifier(leads, step, km) for label in labels}
    archive_array = archive.open()["precip"]
    used, dry, awaiting, showcase = [], 0, 0, None
    for init in inits:
        t0 = int(init.astype(np.int64))
        wanted = [frame_index.get(t0 + k * step_s) for k in range(leads + 1)]  # the init frame, then each lead's
        if None in wanted:
            awaiting += 1
        else:
            window = archive_array.isel(time=wanted, y=ys, x=xs).values
            if is_dry(window[0]):
                dry += 1
            else:
                future = window[1:]
                stored = {label: ds["precip"].isel(init_time=index[t0], lead_time=slice(0, leads), y=ys, x=xs).values
                          for label, ds, index in zip(labels, opened, store_index, strict=True)}
                for label, forecast in stored.items():
                    verifiers[label].accumulate(forecast, future)
                wetness = float(np.nanmean(future >= 1.0))
                if showcase is None or wetness > showcase[0]:
                    showcase = (wetness, Case(wanted[0], init), future, stored)
                used.append(utc_text(init))
        if on_case:
            on_case()
    results = {label: v.result() for label, v in verifiers.items()}
    report = {
        **report_header(store, product, step, leads, km, crop, stride, start, end, len(used), dry),
        "n_cases_awaiting_observations": awaiting,
        "cases": used,
        "forecasts": {
            label: {"path": path, "model": ds.attrs["model"], "init_times_done": len(done[label])}
            for label, path, ds in zip(labels, paths, opened, strict=True)
        },
        "models": {
            label: {"name": ds.attrs["model"], "source": ds.attrs.get("model_source", path),
                    "input_steps": ds.attrs.get("input_steps"), "scores": results[label]}
            for label, path, ds in zip(labels, paths, opened, strict=True)
        },
    }
    write_outputs(report, results, showcase, out)
    return report
