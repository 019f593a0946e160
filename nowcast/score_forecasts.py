"""``nowcast evaluate --forecasts``: score stored forecasts (``nowcast backfill``) against the archive.

A backfilled year is verified without rerunning any model: each forecast store (one per model)
is checked against the product it was made from, the init times ``done`` in every store are the
candidate cases, and each case pairs the stored forecast with the frames later observed at
init + k * step. Cases are scored exactly as ``nowcast.evaluate`` scores a model run (the same
dry rule, ``LeadTimeVerifier`` and report files), so the two reports compare directly. A store that
holds exceedance probabilities (``nowcast backfill --threshold``) is scored on them too, as evaluate
scores a probabilistic model (``ProbabilisticVerifier``: Brier score, its parts, ROC area and the
reliability diagram per lead and stored threshold, in ``models.<label>.probabilistic``); its CRPS is
null there, since a store keeps probabilities at a few thresholds, not members. A case
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

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.evaluate import Case, report_header, write_outputs
from nowcast.forecast_store import (
    PROBABILITY_VARIABLE,
    check_made_from,
    done_init_times,
    open_forecast_store,
    stored_thresholds,
)
from nowcast.probabilistic_verification import ProbabilisticVerifier, probabilistic_scores
from nowcast.verification import LeadTimeVerifier
from pipelines.query import centre_crop, parse_utc, utc_text
from pipelines.store import ProductArchive


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
    thresholds = {label: stored_thresholds(ds) for label, ds in zip(labels, opened, strict=True)}
    probabilistic = {label: ProbabilisticVerifier(leads, step, thresholds[label]) for label in labels
                     if thresholds[label]}
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
                for label, ds, index in zip(labels, opened, store_index, strict=True):
                    if label in probabilistic:  # [lead, threshold, y, x] in 0..1, NaN = nodata
                        probabilities = ds[PROBABILITY_VARIABLE].isel(init_time=index[t0], lead_time=slice(0, leads),
                                                                      y=ys, x=xs).values
                        probabilistic[label].accumulate(future, probabilities=probabilities)
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
            label: {"path": path, "model": ds.attrs["model"], "init_times_done": len(done[label]),
                    **({"thresholds": list(thresholds[label])} if thresholds[label] else {})}
            for label, path, ds in zip(labels, paths, opened, strict=True)
        },
        "models": {  # as nowcast.evaluate reports a model: a store with probabilities as a probabilistic one
            label: {"name": ds.attrs["model"], "source": ds.attrs.get("model_source", path),
                    "input_steps": ds.attrs.get("input_steps"), "scores": results[label],
                    "outputs": ["deterministic", "probability"] if label in probabilistic else ["deterministic"],
                    "probabilistic": probabilistic_scores(probabilistic.get(label), results[label])}
            for label, path, ds in zip(labels, paths, opened, strict=True)
        },
    }
    write_outputs(report, results, showcase, out)
    return report
