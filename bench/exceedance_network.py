"""A network that forecasts exceedance probabilities, not members: its CRPS, and which field it serves.

    python bench/exceedance_network.py [--store data/taasrad19.zarr] [--product taasrad19]
        [--start 2016-07-01T00:00:00 --end 2016-07-31T23:55:00] [--stride 36] [--members 20]
        [--report data/weights/skill/x.json] [--crop N] [--steps-kmperpixel 3.75] [--levels 0.5 0.3 ...]
        [--no-crps] [--out result.json] MODEL

``nowcast evaluate`` scores the CRPS of members (``pysteps.verification.probscores.CRPS``); a network such as
``convlstm_exceedance_taasrad19`` (nowcast/models/exceedance.py) has none, so there its CRPS is left out. Here
the same cases ``nowcast evaluate`` picks with these settings (4 input frames, 12 x 5-min leads, dry cases
skipped; ``--report``: exactly the cases of that evaluate report, checked) are scored two ways:

- ``crps``: pysteps' ensemble CRPS of ``--members`` per-pixel quantiles of the network's distribution, at
  probabilities (m + 0.5) / M: the estimator and the member count STEPS is scored with (its Brier score,
  ROC area and reliability come from the network's own probabilities, as in ``nowcast evaluate``);
- ``crps_integral``: the CRPS of the distribution itself, the integral over r of (S(r) - 1{obs >= r})^2,
  with S the network's survival function, on 400 rain rates from 0 to its ceiling (trapezoids, in mm/h).

``--levels`` scores the deterministic fields the network could serve (``level`` in nowcast/models/exceedance.py):
the mean of the normalised rate and the rate exceeded with each given probability, by CSI at 1 and 5 mm/h and
MAE (``deterministic``): how the shipped network's ``level`` is chosen, on the validation month (the default
dates), never the test months.

The quantile members are pixel-by-pixel quantiles, not spatially coherent futures: fine for a per-pixel score
such as the CRPS, which is why the network does not offer them as an ensemble. ``--steps-kmperpixel`` also
scores pysteps STEPS with that pixel size (the registered ``steps`` assumes 1 km pixels in its velocity
perturbations) on the same cases: a check of how much the baseline's setting matters. Prints one JSON
document (``--out``: also writes it); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.evaluate import select_cases
from nowcast.forecaster import LoadedForecaster, load_forecaster
from nowcast.probabilistic_verification import PROB_THRESHOLDS_MM_H, ProbabilisticVerifier
from nowcast.verification import LeadTimeVerifier
from pipelines.query import centre_crop, utc_text
from pipelines.store import ProductArchive

LEADS, HISTORY = 12, 4
#: rain rates (normalised, evenly spaced up to the ceiling) the CRPS integral is taken over
INTEGRAL_POINTS = 400
#: rows of a 1 km grid whose survival curves are held at once (64 x 710 x 400 doubles: 145 MB)
INTEGRAL_ROWS = 64


def quantile_members(forecaster: LoadedForecaster, frames: np.ndarray, leads: int, members: int) -> np.ndarray:
    """[members, leads, H, W] mm/h: the network's per-pixel quantiles at (m + 0.5) / members, NaN as nodata."""
    z, nodata, _, _ = forecaster._probabilistic_input(frames, leads, None, "probability")
    exceedances = [1.0 - (m + 0.5) / members for m in range(members)]
    with torch.no_grad():
        q = forecaster.model.forward_quantiles(z, leads, exceedances)[0]  # [M, L, H', W']
    ny, nx = nodata.shape[-2:]
    rain = forecaster.normalizer.inverse(q[..., :ny, :nx].float()).numpy()
    return np.where(nodata[0], np.float32(np.nan), rain).astype(np.float32)


def crps_integral(forecaster: LoadedForecaster, frames: np.ndarray, observed: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per lead, the sum over valid pixels of the CRPS of the network's distribution and the pixel count,
    for one case (observed [L, H, W] mm/h), to be pooled like pysteps' CRPS_accum pools."""
    model = forecaster.model
    leads = observed.shape[0]
    z, nodata, _, _ = forecaster._probabilistic_input(frames, leads, None, "probability")
    ny, nx = nodata.shape[-2:]
    levels = torch.linspace(0.0, float(model.knots[-1]), INTEGRAL_POINTS)
    with torch.no_grad():
        s = model.survival(z, leads)[0, ..., :ny, :nx]  # [L, K, H, W]
    rates = forecaster.normalizer.inverse(levels.double()).numpy()
    sums, counts = np.zeros(leads), np.zeros(leads)
    for lead in range(leads):
        for r0 in range(0, ny, INTEGRAL_ROWS):  # S at every rate for a band of rows: bounded memory on 1 km grids
            rows = slice(r0, r0 + INTEGRAL_ROWS)
            valid = np.isfinite(observed[lead, rows]) & ~nodata[0, rows]
            if not valid.any():
                continue
            with torch.no_grad():
                band = model.probabilities_from(s[lead : lead + 1, :, rows], levels[1:]).double().numpy()[0]
            y = observed[lead, rows][valid][None]  # [1, N]
            p = np.concatenate([np.ones((1, y.shape[1])), band[:, valid]])  # S(0) = 1
            error = (p - (y >= rates[:, None])) ** 2
            area = np.sum(0.5 * (error[1:] + error[:-1]) * np.diff(rates)[:, None], axis=0)
            area += np.clip(y[0] - rates[-1], 0.0, None)  # observed above the ceiling, where S = 0
            sums[lead] += area.sum()
            counts[lead] += valid.sum()
    return sums, counts


def deterministic_fields(forecaster: LoadedForecaster, frames: np.ndarray, leads: int, levels: list[float]
                         ) -> dict[str, np.ndarray]:
    """{"mean": ..., "0.3": ...}: [L, H, W] mm/h, NaN as nodata: the fields ``level`` None or each level gives."""
    model = forecaster.model
    z, nodata, _, _ = forecaster._probabilistic_input(frames, leads, None, "probability")
    ny, nx = nodata.shape[-2:]
    with torch.no_grad():
        s = model.survival(z, leads)[0, ..., :ny, :nx]
        fields = {"mean": model.mean_from(s), **{f"{q:g}": model.quantile_from(s, q) for q in levels}}
    return {k: np.where(nodata[0], np.float32(np.nan), forecaster.normalizer.inverse(v.float()).numpy())
            for k, v in fields.items()}


def csi_summary(verifier: LeadTimeVerifier) -> dict[str, float | None]:
    rows = verifier.result()
    at30, at60 = rows[5], rows[11]
    return {"csi_1mm_30min": at30["csi"]["1.0"], "csi_1mm_60min": at60["csi"]["1.0"],
            "csi_5mm_30min": at30["csi"]["5.0"], "csi_1mm_mean": float(np.mean([r["csi"]["1.0"] for r in rows])),
            "mae_30min": at30["mae_mm_h"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--store", default="data/taasrad19.zarr")
    parser.add_argument("--product", default="taasrad19")
    parser.add_argument("--start", default="2016-07-01T00:00:00")
    parser.add_argument("--end", default="2016-07-31T23:55:00")
    parser.add_argument("--stride", type=int, default=36)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--report", type=Path, help="an evaluate report whose cases (and settings) to score")
    parser.add_argument("--steps-kmperpixel", type=float, help="also score STEPS with this pixel size (km)")
    parser.add_argument("--levels", type=float, nargs="*", default=[],
                        help="exceedance probabilities whose quantile fields to score as the deterministic forecast")
    parser.add_argument("--crop", type=int, help="the centred N x N window, as nowcast evaluate --crop")
    parser.add_argument("--no-crps", action="store_true",
                        help="leave the CRPS out (quantiles and integral): for choosing --levels on a 1 km grid, fast")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
        args.store, args.product, args.stride = report["store"], report["product"], report["stride"]
        args.start, args.end = report["start"], report["end"]
        args.crop = report.get("crop")
    archive = ProductArchive(args.store, args.product)
    times, grid, step = archive_layout(archive)
    forecaster = load_forecaster(args.model)
    verifier = ProbabilisticVerifier(LEADS, step)
    steps = steps_verifier = None
    if args.steps_kmperpixel:
        from nowcast.models.steps import Steps

        steps = Steps(forecaster.normalizer.to_dict(), kmperpixel=args.steps_kmperpixel, timestep=step)
        steps_verifier = ProbabilisticVerifier(LEADS, step)
    fields = {name: LeadTimeVerifier(LEADS, step, pixel_size_km(grid))
              for name in ["mean", *(f"{q:g}" for q in args.levels)]} if args.levels else {}
    integral_sum = np.zeros(LEADS)
    integral_n = np.zeros(LEADS)
    cases = select_cases(times, HISTORY, LEADS, step, args.start, args.end, args.stride)
    used = []
    ys, xs = centre_crop(grid.shape, args.crop)
    with archive.open() as ds:
        precip = ds["precip"]
        for i, case in enumerate(cases):
            window = precip.isel(time=slice(case.start, case.start + HISTORY + LEADS)).values[:, ys, xs]
            past, future = window[:HISTORY], window[HISTORY:]
            if is_dry(past[-1]):
                continue
            probabilities = forecaster.predict_probabilities(past, LEADS, list(PROB_THRESHOLDS_MM_H))
            if args.no_crps:
                verifier.accumulate(future, probabilities=probabilities)
            else:
                members = quantile_members(forecaster, past, LEADS, args.members)
                verifier.accumulate(future, members=members, probabilities=probabilities)
                total, n = crps_integral(forecaster, past, future)
                integral_sum += total
                integral_n += n
            if fields:
                for name, field in deterministic_fields(forecaster, past, LEADS, args.levels).items():
                    fields[name].accumulate(field, future)
            if steps is not None:
                ensemble = steps.ensemble_mm_h(past, LEADS, 20)
                ensemble = np.where(np.isnan(past[-1]), np.float32(np.nan), ensemble)
                steps_verifier.accumulate(future, members=ensemble)
            used.append(utc_text(case.init))
            print(f"{i + 1}/{len(cases)} {used[-1]}", file=sys.stderr, flush=True)
    if args.report and used != report["cases"]:
        raise SystemExit(f"these cases differ from the report's ({len(used)} vs {len(report['cases'])})")
    rows = verifier.result()
    for lead, row in enumerate(rows):
        row["crps_integral"] = float(integral_sum[lead] / integral_n[lead]) if integral_n[lead] else None
    result = {"model": args.model, "store": args.store, "product": args.product, "start": args.start,
              "end": args.end, "stride": args.stride, "crop": args.crop, "members": args.members, "n_cases": len(used),
              "cases": used, "probabilistic": rows}
    if fields:
        result["deterministic"] = {name: csi_summary(v) for name, v in fields.items()}
    if steps_verifier is not None:
        result["steps_kmperpixel"] = {"kmperpixel": args.steps_kmperpixel, "probabilistic": steps_verifier.result()}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
