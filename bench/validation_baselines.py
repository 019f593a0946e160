"""Any forecaster on a training config's validation windows, scored the way validation scores.

    python bench/validation_baselines.py [--config configs/weights/convlstm.yaml] MODEL [MODEL ...]

MODEL: a baseline (persistence, optical_flow, ...), a shipped model or a checkpoint, or ``cached``:
the windows' cached extrapolation of a hybrid's config (``data.extrapolation``), i.e. what that
hybrid scores untrained. Each other one runs in
mm/h through ``load_forecaster`` on the same windows (crops included) that ``nowcast train``
validates on, and gets the CSI at 1 mm/h per lead from contingency counts pooled over the windows
(``LeadTimeVerifier``, as ``nowcast evaluate`` scores), then averaged over the leads: the
``val/csi_1mm/mean`` a checkpoint is chosen on. It answers whether the validation set ranks models
the way the full-grid test events do. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import yaml

from nowcast.forecaster import load_forecaster
from nowcast.verification import LeadTimeVerifier
from pipelines.datamodule import RadarDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--config", default="configs/weights/convlstm.yaml", help="its data section is used")
    parser.add_argument("--threshold", type=float, default=1.0, help="mm/h")
    args = parser.parse_args()
    data = yaml.safe_load(open(args.config))["data"]
    module = RadarDataModule(**data)
    module.setup("fit")
    windows = module.val_dataloader().dataset
    normalizer = _first(windows).normalizer  # how the windows were normalised, whatever the model
    results = {}
    for name in args.models:
        forecaster = None if name == "cached" else load_forecaster(name)
        verifier = LeadTimeVerifier(data["t_out"], windows_step(windows), 1.0, thresholds=(args.threshold,))
        for index in range(len(windows)):
            item = windows[index]
            if forecaster is None:  # nodata where the target has none, as the hybrid's forecast would be
                forecast = _mm_h(item["extrapolation"], item["target_mask"], normalizer)
            else:
                forecast = forecaster.predict(_mm_h(item["inputs"], item["input_mask"], normalizer), data["t_out"])
            verifier.accumulate(forecast, _mm_h(item["targets"], item["target_mask"], normalizer))
        csi = [lead["csi"][str(float(args.threshold))] for lead in verifier.result()]
        results[name] = {"csi_mean": round(float(np.mean(csi)), 4), "csi_by_lead": [round(float(c), 4) for c in csi]}
    print(json.dumps({"config": args.config, "threshold_mm_h": args.threshold, "windows": len(windows),
                      "models": results}, indent=2))


def _first(windows: Any) -> Any:
    return windows.datasets[0] if hasattr(windows, "datasets") else windows


def windows_step(windows: Any) -> float:
    return float(_first(windows).step_minutes)


def _mm_h(z, mask, normalizer) -> np.ndarray:
    """A window's normalised frames back to mm/h, NaN where the mask says nodata."""
    rain = normalizer.inverse(z[:, 0]).numpy()
    rain[~mask[:, 0].numpy()] = np.nan
    return rain


if __name__ == "__main__":
    main()
