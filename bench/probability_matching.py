"""Does probability matching (``nowcast.postprocessing``) help a forecaster? Raw and matched, same forecasts.

    python bench/probability_matching.py [--store data/weights/train.zarr] [--product mch]
        [--start 2015-05-15T00:00:00 --end 2015-05-15T23:59:00] [--stride 3] MODEL [MODEL ...]

Each MODEL (a baseline, a shipped model or a checkpoint, run without its own post-processing)
forecasts the cases ``nowcast evaluate`` would pick with these settings (full grid, 4 input
frames, 12 x 5-min leads, dry cases skipped); every forecast is scored as it is and after each
matching of ``nowcast.postprocessing`` (``cdf``, ``cdf_wet``) to its last observed frame, pooled
over the cases like ``nowcast evaluate``. The default
is the validation day of the shipped models (MeteoSwiss 2015-05-15): what chose each shipped
model's ``probability_matching`` (docs/skill.md), never the test events. ``choose`` applies the
rule: of the matchings that gain CSI at 5 mm/h, 30 min and lose no more than 0.005 of CSI at
1 mm/h at 30 or at 60 min, the one that gains most; "none" when none does. Prints one JSON document; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.evaluate import select_cases
from nowcast.forecaster import load_forecaster
from nowcast.postprocessing import PROBABILITY_MATCHING, post_process
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


def choose(scored: dict[str, dict[str, float | None]]) -> str:
    """The matching the rule picks from ``scored`` (method -> scores, "none" among them)."""
    raw = scored["none"]

    def gain(method: str) -> float:
        matched = scored[method]
        keeps_1mm = all((matched[k] or 0.0) >= (raw[k] or 0.0) - TOLERANCE for k in ("csi_1mm_30min", "csi_1mm_60min"))
        return (matched["csi_5mm_30min"] or 0.0) - (raw["csi_5mm_30min"] or 0.0) if keeps_1mm else 0.0

    best = max(scored, key=gain)
    return best if gain(best) > 0 else "none"


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
                 for m in args.models for kind in PROBABILITY_MATCHING}
    rain = archive.open()["precip"]
    used = []
    for case in select_cases(times, HISTORY, LEADS, step, args.start, args.end, args.stride):
        window = rain.isel(time=slice(case.start, case.start + HISTORY + LEADS)).values
        past, future = window[:HISTORY], window[HISTORY:]
        if is_dry(past[-1]):
            continue
        for name, forecaster in forecasters.items():
            forecast = forecaster.predict(past, LEADS, step)
            for kind in PROBABILITY_MATCHING:
                verifiers[(name, kind)].accumulate(post_process(kind, forecast, past[-1]), future)
        used.append(str(case.init)[:16])
        print(f"{args.product} {used[-1]}", file=sys.stderr, flush=True)
    results = {}
    for name in args.models:
        scored = {kind: scores(verifiers[(name, kind)]) for kind in PROBABILITY_MATCHING}
        results[name] = {**scored, "choose": choose(scored)}
    print(json.dumps({"store": args.store, "product": args.product, "start": args.start, "end": args.end,
                      "stride": args.stride, "cases": used, "tolerance": TOLERANCE, "models": results}, indent=2))


if __name__ == "__main__":
    main()
