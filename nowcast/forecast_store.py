"""Reading a backfill's forecast store: what ``nowcast backfill`` writes and its readers share.

Backfill writes the store, and two readers score it: ``nowcast evaluate --forecasts``
(``nowcast.score_forecasts``) and the live-verification ledger (``nowcast.live_verification``), which
backfill itself calls at the end of a run. The readers' half lives here, below all three, so that
backfill -> live_verification -> score_forecasts -> backfill is no longer an import circle: data flows
down, and each of them imports this module only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from pipelines.grid import Grid
from pipelines.store import open_rain_dataset, open_zarr_store

#: what a forecast store must carry to be scored
REQUIRED_ATTRS = ("model", "product", "step_minutes")
#: exceedance probabilities beside ``precip`` (``nowcast backfill --threshold``: nowcast.backfill_probabilities)
PROBABILITY_VARIABLE = "probability"


def open_forecasts(out: str | Path) -> xr.Dataset:
    """The forecast store as a Dataset (``done`` says which init times are complete)."""
    return open_rain_dataset(open_zarr_store(str(out), read_only=True))  # rain in float32, as written


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


def stored_thresholds(ds: xr.Dataset) -> tuple[float, ...]:
    """The thresholds (mm/h) of the store's exceedance probabilities; empty when it holds none."""
    if PROBABILITY_VARIABLE not in ds:
        return ()
    return tuple(float(t) for t in ds["threshold"].values)


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
