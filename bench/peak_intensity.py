"""How heavy do forecasts get? The heaviest pixel and the pixels above a rate, per lead, against the
observation, on one full-grid case of a test event no shipped model saw.

    python bench/peak_intensity.py [--product mch] [--init 4] [--above 50] MODEL [MODEL ...]

The case is the one ``tests/test_shipped.py`` forecasts: the first 20 files of the product's sample
(MeteoSwiss 2016-07-11 by default), frames ``init-3 .. init`` in, 12 x 5 min leads out. A network that
sharpens what it corrects can run away (docs/skill.md: a recipe of ``convlstm_sprog`` reached 900
mm/h); this reports every lead's peak and how many pixels exceed ``--above`` mm/h. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from nowcast.forecaster import load_forecaster
from pipelines.sample_data import SAMPLE_EVENTS, sample_event_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--product", default="mch", choices=sorted(SAMPLE_EVENTS))
    parser.add_argument("--init", type=int, default=7, help="index of the last input frame")
    parser.add_argument("--above", type=float, default=50.0, help="mm/h")
    parser.add_argument("--leads", type=int, default=12)
    args = parser.parse_args()
    from pipelines.ingest import decode

    files = sample_event_files(args.product, args.init + 1 + args.leads)
    radar = np.stack([decode(path, SAMPLE_EVENTS[args.product][1]).rain_rate for path in files]).astype(np.float32)
    frames, observed = radar[args.init - 3 : args.init + 1], radar[args.init + 1 : args.init + 1 + args.leads]
    leads = [5 * (k + 1) for k in range(len(observed))]
    result = {"product": args.product, "input_files": [p.name for p in files[args.init - 3 : args.init + 1]],
              "above_mm_h": args.above, "lead_minutes": leads,
              "observed": summary(observed, args.above), "input_peak_mm_h": round(float(np.nanmax(frames)), 1),
              "models": {}}
    for name in args.models:
        forecast = load_forecaster(name).predict(frames, len(observed))
        result["models"][name] = summary(forecast, args.above)
    print(json.dumps(result, indent=2))


def summary(frames: np.ndarray, above: float) -> dict[str, list]:
    """Per lead: the heaviest pixel (mm/h) and the number of pixels above ``above`` mm/h."""
    return {"peak_mm_h": [round(float(np.nanmax(f)), 1) for f in frames],
            "pixels_above": [int(np.nansum(f > above)) for f in frames]}


if __name__ == "__main__":
    main()
