"""Does probability matching (``nowcast.postprocessing``) help a forecaster? Raw and matched, same forecasts.

    python bench/probability_matching.py [--store data/weights/train.zarr] [--product mch]
        [--start 2015-05-15T00:00:00 --end 2015-05-15T23:59:00] [--stride 3] MODEL [MODEL ...]

Each MODEL (a baseline, a shipped model or a checkpoint, run without its own post-processing)
forecasts the cases ``nowcast evaluate`` would pick with these settings (full grid, 4 input
frames, 12 x 5-min leads, dry cases skipped); every forecast is scored as it is and after CDF
matching to its last observed frame, pooled over the cases like ``nowcast evaluate``. The default
is the validation day of the shipped models (MeteoSwiss 2015-05-15): what chose each shipped
model's ``probability_matching`` (docs/skill.md), never the test events. ``choose`` applies the
rule: "cdf" when matching gains CSI at 5 mm/h, 30 min and loses no more than 0.005 of CSI at
1 mm/h at 30 or at 60 min, else "none". Prints one JSON document; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.evaluate import select_cases
from nowcast.forecaster import load_forecaster
from nowcast.postprocessing import match_cdf
from nowcast.verification import LeadTimeVerifier
from pipelines.store import ProductArchive

LEADS, HISTORY = 12, 4
#: most CSI at 1 mm/h (30 or 60 min) matching may cost and still be chosen
TOLERANCE = 0.005


def scores(verifier: LeadTimeVerifier) -> dict[str, float | None]:
    rows = verifier.result()
    at30, at60 = rows[5], rows[11]
    bias = (at30["hits"]["1.0"] + at30["false_alarms"]["1.0"]) / max(1, at30["hits"]["1.0"] + at30["misses"]["1.0"])
    return {"csi_1mm_30min": at30["csi"]["1.0"], "csi_1mm_60min": at60["csi"]["1.0"],
            "csi_5mm_30min": at30["csi"]["5.0"], "csi_10mm_30min": at30["csi"]["10.0"],
            "fss_60min": at60["fss_1mm_10km"], "frequency_bias_1mm_30min": bias, "mae_30min": at30["mae_mm_h"]}


def choose(raw: dict[str, float | None], cdf: dict[str, float | None]) -> str:
    keeps_1mm = all((cdf[k] or 0.0) >= (raw[k] or 0.0) - TOLERANCE for k in ("csi_1mm_30min", "csi_1mm_60min"))
    return "cdf" if keeps_1mm and (cdf["csi_5mm_30min"] or 0.0) > (raw["csi_5mm_30min"] or 0.0) else "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--store", default="data/weights/train.zarr")
    parser.add_argument("--product", default="mch")
    parser.add_argument("--start", default="2015-05-15T00:00:00")
    parser.add_argument("--end", default="2015-05-15T23:59:00")
    parser.add_argument("--stride", type=int, default=3)
    args = parser.parse_args()
    archive = ProductArchive(args.store, args.product)
    times, grid, step = archive_layout(archive)
    forecasters = {m: load_forecaster(m, probability_matching="none") for m in args.models}
    verifiers = {(m, kind): LeadTimeVerifier(LEADS, step, pixel_size_km(grid))
                 for m in args.models for kind in ("none", "cdf")}
    rain = archive.open()["precip"]
    used = []
    for case in select_cases(times, HISTORY, LEADS, step, args.start, args.end, args.stride):
        window = rain.isel(time=slice(case.start, case.start + HISTORY + LEADS)).values
        past, future = window[:HISTORY], window[HISTORY:]
        if is_dry(past[-1]):
            continue
        for name, forecaster in forecasters.items():
            forecast = forecaster.predict(past, LEADS, step)
            verifiers[(name, "none")].accumulate(forecast, future)
            verifiers[(name, "cdf")].accumulate(match_cdf(forecast, past[-1]), future)
        used.append(str(case.init)[:16])
        print(f"{args.product} {used[-1]}", file=sys.stderr, flush=True)
    results = {}
    for name in args.models:
        raw, cdf = scores(verifiers[(name, "none")]), scores(verifiers[(name, "cdf")])
        results[name] = {"none": raw, "cdf": cdf, "choose": choose(raw, cdf)}
    print(json.dumps({"store": args.store, "product": args.product, "start": args.start, "end": args.end,
                      "stride": args.stride, "cases": used, "tolerance": TOLERANCE, "models": results}, indent=2))


if __name__ == "__main__":
    main()
