"""What resampling in time costs the baselines a hybrid corrects: pysteps' S-PROG and optical flow run
natively on a coarse product, against the same methods at 5 minutes on its history resampled along
the motion (what a 5-minute hybrid such as ``convlstm_sprog`` starts from on that product).

    python bench/resampled_baselines.py [--store data/weights/test15.zarr] [--product mch]

Every init with 3 frames of history and 4 leads at the product's step; CSI from contingency counts
pooled over the inits (``LeadTimeVerifier``), at 1 mm/h (30 and 60 min) and 5 mm/h (30 min).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from nowcast.verification import LeadTimeVerifier
from pipelines.motion import extrapolate, sprog
from pipelines.store import ProductArchive
from pipelines.time_interpolation import interpolate_along_motion

MODEL_STEP = 5.0
METHODS = {"sprog": sprog, "optical_flow": extrapolate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="data/weights/test15.zarr")
    parser.add_argument("--product", default="mch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    precip = ProductArchive(args.store, args.product).open().precip
    step = float((precip.time[1] - precip.time[0]) / np.timedelta64(60, "s"))
    rain = precip.values.astype(np.float32)
    ratio = int(round(step / MODEL_STEP))
    history_at_5 = -MODEL_STEP * np.arange(3)[::-1]  # S-PROG's AR(2) needs 3 frames
    result: dict = {"store": args.store, "product": args.product, "step_minutes": step, "inits": rain.shape[0] - 6}
    for name, method in METHODS.items():
        for how in ("native", "resampled"):
            verifier = LeadTimeVerifier(4, step, 1.0, thresholds=(1.0, 5.0))
            for i in range(2, rain.shape[0] - 4):
                history, future = rain[i - 2 : i + 1], rain[i + 1 : i + 5]
                if how == "native":
                    forecast = method(history.astype(np.float64), 4)
                else:
                    at_5 = interpolate_along_motion(history[None], step, history_at_5)[0]
                    forecast = method(at_5.astype(np.float64), 4 * ratio)[ratio - 1 :: ratio]
                forecast = np.where(np.isnan(history[-1])[None], np.nan, np.nan_to_num(forecast, nan=0.0))
                verifier.accumulate(forecast.astype(np.float32), future)
            leads = verifier.result()
            result[f"{name}_{how}"] = {"csi_1mm_30min": round(leads[1]["csi"]["1.0"], 3),
                                       "csi_1mm_60min": round(leads[3]["csi"]["1.0"], 3),
                                       "csi_5mm_30min": round(leads[1]["csi"]["5.0"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
