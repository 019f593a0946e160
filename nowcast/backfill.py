"""Batch backfill: a forecast for every init time of a range, into a Zarr forecast store.

Layout: ``precip(init_time, lead_time, y, x)`` in mm/h (same CF encoding as the archive),
``done(init_time)``, coordinates, the CRS and the model's name/version. The store is laid out
for all planned init times up front (metadata only), then filled region by region: each
init time's frames are one chunk, and its ``done`` flag (one chunk per init time, so parallel
writers never share a chunk) is set only after its frames are written. A rerun skips init
times already done; a kill loses at most those in flight; readers see nodata where nothing is
done yet. Work is split into tasks of ``batch`` init times, each one forward pass, run in
local processes or on a Dask distributed cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from nowcast import __version__
from nowcast.backfill_probabilities import VARIABLE as PROBABILITY
from nowcast.backfill_probabilities import (
    add_probability_layout,
    backfill_thresholds,
    check_stored_thresholds,
    forecast_and_probabilities,
)
from nowcast.forecast_store import open_forecasts  # noqa: F401  (the store's reader, where callers look for it)
from nowcast.forecaster import LoadedForecaster, load_forecaster, model_identity
from pipelines.cf import rain_rate_dataset
from pipelines.channels import AuxiliaryInputs
from pipelines.grid import Grid
from pipelines.query import check_step, plan_windows, time_step_minutes, utc_text
from pipelines.store import FILL, SCALE, ProductArchive, open_rain_dataset, open_zarr_store


@dataclass(frozen=True)
class Task:
    """Init times (as indices into the forecast store) and where their history starts."""

    store: str
    product: str
    model: str
    out: str
    lead_steps: int
    indices: tuple[int, ...]
    history_starts: tuple[int, ...]
    step_minutes: float | None = None  # the product's; resampled in time when the model's differs
    thresholds: tuple[float, ...] = ()  # exceedance probabilities to store too (nowcast.backfill_probabilities)
    members: int | None = None  # ensemble size they are counted over (None: the model's default)


@cache
def _forecaster(spec: str) -> LoadedForecaster:
    """One load per worker process, reused by every task it runs."""
    return load_forecaster(spec)


def create_forecast_store(
    out: str, inits: np.ndarray, lead_steps: int, step_minutes: float, grid: Grid, forecaster: LoadedForecaster,
    product: str, model_spec: str, name: str | None = None, thresholds: tuple[float, ...] = (),
) -> None:
    """Lay out the forecast store; ``name`` (default the forecaster's) is what its forecasts are
    recorded as, with the weights' fingerprint beside it (``model_identity``)."""
    name = name or forecaster.name
    ny, nx = grid.shape
    leads = np.array([np.timedelta64(int(round(step_minutes * 60 * (k + 1))), "s") for k in range(lead_steps)])
    precip = da.full((len(inits), lead_steps, ny, nx), np.nan, dtype=np.float32, chunks=(1, lead_steps, ny, nx))
    template = rain_rate_dataset(
        precip, ("init_time", "lead_time", "y", "x"),
        {"init_time": ("init_time", inits.astype("datetime64[ns]"),
                       {"standard_name": "forecast_reference_time", "long_name": "init time (UTC)"}),
         "lead_time": ("lead_time", leads.astype("timedelta64[ns]"), {"standard_name": "forecast_period"})},
        grid, "forecast rain rate",
        {"title": f"{name} nowcasts of {product}", "product": product, "model": name,
         "model_architecture": forecaster.architecture, "model_fingerprint": forecaster.fingerprint or "",
         "model_identity": model_identity(name, forecaster.fingerprint),
         "model_source": model_spec, "nowcast_version": __version__, "step_minutes": step_minutes},
    )
    template["done"] = (("init_time",), da.zeros(len(inits), dtype=np.int8, chunks=1),
                        {"long_name": "1 once this init time's forecast is written", "flag_values": [0, 1]})
    encoding = {
        "precip": {"dtype": "uint16", "scale_factor": SCALE, "_FillValue": FILL, "fill_value": FILL,
                   "chunks": (1, lead_steps, min(ny, 1024), min(nx, 1024))},
        "init_time": {"units": "seconds since 1970-01-01", "dtype": "int64"},
        "lead_time": {"units": "seconds", "dtype": "int64"},
    }
    if thresholds:  # probability(init_time, lead_time, threshold, y, x) beside precip
        add_probability_layout(template, encoding, thresholds, lead_steps)
    template.to_zarr(open_zarr_store(out), mode="w", compute=False, encoding=encoding, zarr_format=3,
                     consolidated=True)


@dataclass(frozen=True)
class TaskDone:
    """The init-time indices a task wrote, and per auxiliary product how many lacked a frame of it."""

    indices: list[int]
    auxiliary_missing: dict[str, int]


def run_task(task: Task) -> TaskDone:
    """Forecast a batch of init times in one forward pass and write them."""
    forecaster = _forecaster(task.model)
    history = forecaster.frames_needed(task.step_minutes)
    archive = ProductArchive(task.store, task.product)
    with archive.open() as source:
        window = np.stack([
            source["precip"].isel(time=slice(s, s + history)).values for s in task.history_starts
        ])
        times = source["time"].values.astype("datetime64[s]")
    auxiliary, missing = None, {}
    if forecaster.auxiliary:  # multi-source: each init's auxiliary frames, on this product's grid
        inputs = AuxiliaryInputs(task.store, forecaster.auxiliary, archive.grid())
        reads = [inputs.read(times[s : s + history]) for s in task.history_starts]
        auxiliary = {p: np.stack([r[p] for r in reads]) for p in forecaster.input_products}
        missing = inputs.cases_missing
    probabilities = None
    if task.thresholds:  # [B, lead, threshold, H, W] too; an ensemble model's precip is its members' mean
        forecasts, probabilities = forecast_and_probabilities(forecaster, window, task.lead_steps, task.step_minutes,
                                                              task.thresholds, task.members)
    else:
        forecasts = forecaster.predict(window, task.lead_steps, task.step_minutes, auxiliary=auxiliary)
    # outside the radar's coverage (nodata in the last observed frame) the forecast is nodata too
    forecasts = np.where(np.isnan(window[:, -1:]), np.nan, forecasts)
    out = open_zarr_store(task.out)
    frames = xr.Dataset({"precip": (("init_time", "lead_time", "y", "x"), forecasts.astype(np.float32))})
    if probabilities is not None:
        frames[PROBABILITY] = (("init_time", "lead_time", "threshold", "y", "x"), probabilities.astype(np.float32))
    done = zarr.open_array(out, path="done", mode="r+", zarr_format=3)
    for k, index in enumerate(task.indices):
        frames.isel(init_time=slice(k, k + 1)).to_zarr(
            out, region={"init_time": slice(index, index + 1)}, mode="r+", zarr_format=3, consolidated=False,
        )
        done[index] = 1  # after the frames: a flag never claims frames that are not there
    return TaskDone(list(task.indices), missing)


def backfill(
    model: str, store: str, product: str, start: str, end: str, out: str, every: int = 1,
    lead_steps: int | None = None, scheduler: str = "local", workers: int = 2, batch: int = 4,
    on_progress: Callable[[int, int], None] | None = None, verify: bool = True, label: str | None = None,
    thresholds: Sequence[float] | None = None, members: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a backfill; returns a summary.

    ``label``: the name the run's forecasts are recorded under (default the model's name); the
    weights' fingerprint always rides beside it, so two networks that share a name never pool.

    ``verify``: register the store with the archive's verification ledger and score the init
    times whose observations are in (``summary["verification"]``); the rest are scored by later
    passes (the service's, or ``nowcast verify``) as their frames are ingested.

    ``thresholds`` (mm/h): also store exceedance probabilities, counted over ``members`` members for an
    ensemble model (``nowcast.backfill_probabilities``)."""
    forecaster = _forecaster(model)
    archive = ProductArchive(store, product)
    if not archive.exists():
        raise KeyError(f"no product {product!r} in {store}")
    name = label or forecaster.name
    thresholds = backfill_thresholds(forecaster, thresholds)
    times = archive.times()
    step = time_step_minutes(times)
    if step is None:
        raise ValueError(f"product {product!r} has fewer than two frames")
    leads = lead_steps or forecaster.default_lead_steps
    check_step(step, forecaster.step_minutes, forecaster.name)
    if forecaster.auxiliary:  # every auxiliary product there, and the regrid mapping cached, before any worker
        AuxiliaryInputs(store, forecaster.auxiliary, archive.grid())
    history = forecaster.frames_needed(step)  # a model trained at another step gets resampled frames
    windows = plan_windows(times, history, 0, step, start, end, every)
    inits, history_starts = windows.inits, windows.starts
    if not len(inits):
        raise ValueError(f"no init time in {start} .. {end} has {history} frames of history; {product} holds "
                         f"{len(times)} frames {utc_text(times[0])} .. {utc_text(times[-1])} every {step:g} min")
    existing = _existing(out)
    if existing is None:
        create_forecast_store(out, inits, leads, step, archive.grid(), forecaster, product, model, name, thresholds)
    else:
        _check_compatible(existing, inits, leads, forecaster, out, name)
        check_stored_thresholds(existing, thresholds, out)
    done = zarr.open_array(open_zarr_store(out), path="done", mode="r", zarr_format=3)[:]
    todo = [i for i in range(len(inits)) if not done[i]]
    tasks = [
        Task(store, product, model, out, leads, tuple(todo[i : i + batch]),
             tuple(int(history_starts[j]) for j in todo[i : i + batch]), step, thresholds, members)
        for i in range(0, len(todo), max(1, batch))
    ]
    finished = len(inits) - len(todo)
    if on_progress:
        on_progress(finished, len(inits))
    missing = dict.fromkeys(forecaster.input_products, 0)
    for result in _execute(tasks, scheduler, workers):
        finished += len(result.indices)
        for product, count in result.auxiliary_missing.items():
            missing[product] += count
        if on_progress:
            on_progress(finished, len(inits))
    summary = {"out": out, "model": name, "identity": model_identity(name, forecaster.fingerprint),
               "init_times": len(inits), "skipped_already_done": len(inits) - len(todo), "written": len(todo),
               "lead_steps": leads, "first": utc_text(inits[0]), "last": utc_text(inits[-1]),
               **({"thresholds": list(thresholds)} if thresholds else {})}
    if forecaster.auxiliary:  # init times written with zeros-plus-mask for a missing auxiliary frame
        summary["auxiliary_cases_missing"] = missing
    if verify:
        from nowcast.live_verification import VerificationLedger

        ledger = VerificationLedger(store, product)
        ledger.add_source(out)
        summary["verification"] = dataclasses.asdict(ledger.verify())
    return summary


def _existing(out: str) -> xr.Dataset | None:
    try:
        return open_rain_dataset(open_zarr_store(out, read_only=True))
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return None


def _check_compatible(existing: xr.Dataset, inits: np.ndarray, leads: int, forecaster: LoadedForecaster,
                      out: str, name: str | None = None) -> None:
    """A resumed store must hold this very model's forecasts: same name, same weights, same leads."""
    planned = existing["init_time"].values.astype("datetime64[s]")
    identity = model_identity(name or forecaster.name, forecaster.fingerprint)
    held = existing.attrs.get("model_identity")
    if held is None:  # laid out before identities were recorded: the name is all there is to compare
        held, identity = existing.attrs.get("model"), name or forecaster.name
    if existing.sizes["lead_time"] != leads or held != identity:
        raise ValueError(f"{out} holds {held} forecasts with {existing.sizes['lead_time']} "
                         f"leads; use a new --out for {identity} with {leads}")
    if len(planned) != len(inits) or not np.array_equal(planned, inits):
        raise ValueError(f"{out} was laid out for {len(planned)} init times {planned[0]}Z .. {planned[-1]}Z; "
                         f"rerun with that range (and --every) to resume, or use a new --out")


def _execute(tasks: list[Task], scheduler: str, workers: int):
    """Completed tasks' indices as they finish, from local processes or a Dask cluster."""
    if not tasks:
        return
    if scheduler == "local":
        if workers <= 1:
            for task in tasks:
                yield run_task(task)
            return
        from concurrent.futures import as_completed

        from pipelines.processes import worker_pool

        with worker_pool(workers) as pool:
            for future in as_completed([pool.submit(run_task, t) for t in tasks]):
                yield future.result()
        return
    from distributed import Client
    from distributed import as_completed as dask_completed

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(Client(scheduler))
        for future in dask_completed(client.map(run_task, tasks, pure=False)):
            yield future.result()
