"""One forecast on CPU at the service's grid limit, per served model: does it finish within the
service's timeout? (JSON on stdout; one line per forecast on stderr as it goes)

    python bench/cpu_forecast_limit.py [--size 1024] [--models sa_convlstm sprog ...] [--write] [--no-check]

1. Cost: each model (default: every shipped network, TAASRAD19's too, and the default service's
   baselines that compute) forecasts one size x size grid (default: the service's max_grid_pixels,
   1024 x 1024) of synthetic storms (``pipelines.synthetic``, so the hybrids' optical flow sees
   moving rain) at its own leads (12),
   as the service's worker thread does (``LoadedForecaster.predict``, torch's default threads), after
   a warm-up on a small grid. Wall seconds, process CPU seconds (all threads) and the load average
   are recorded: on a shared machine the wall time says more about the others' jobs than about the
   model, the CPU seconds much less (on two idle cores a forecast's wall time is at most its CPU
   seconds). ``--write`` stores them in ``nowcast/weights/cpu_cost.json``, from which the service
   derives each model's pixel limit on a CPU (``service.serving.cpu_pixel_limit``).
2. Check (unless ``--no-check``; ``--check-only``: this alone): each model whose limit (at the
   service's default settings) is under the grid measured forecasts a square grid at its limit, the
   same way; ``within_timeout`` says whether that took under ``inference_timeout_s`` (60 s) of wall
   time, load and all.

The optical-flow field and the baselines' forecasts are memoised by content (``pipelines.motion``):
they are cleared before every timed forecast, so that each model pays for its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nowcast.forecaster import load_forecaster, shipped_models  # noqa: E402
from pipelines.synthetic import synthetic_frames  # noqa: E402
from service.serving import CPU_COST, cpu_pixel_limit  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402

#: the default service's baselines that compute (persistence copies a frame: nothing to measure)
BASELINES = ("optical_flow", "sprog")


def storm(size: int, n: int = 6) -> np.ndarray:
    frames = synthetic_frames(n_frames=n, shape=(size, size), n_cells=24, seed=1)
    return np.stack([f.rain_rate for f in frames]).astype(np.float32)


def timed(forecaster, frames: np.ndarray, leads: int) -> dict:
    from pipelines import motion

    for memo in (motion._motion_memo, motion._extrapolation_memo, motion._sprog_memo):
        memo.items.clear()  # the motion field and baseline forecast of the same frames are memoised: not here
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    forecaster.predict(frames[-forecaster.frames_needed():], leads)
    return {"wall_seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    settings = ServiceSettings(models=["persistence"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=int(settings.max_grid_pixels ** 0.5))
    parser.add_argument("--models", nargs="+", default=[*shipped_models(), *shipped_models("taasrad19"), *BASELINES])
    parser.add_argument("--write", action="store_true", help=f"store the costs in {CPU_COST}")
    parser.add_argument("--no-check", action="store_true", help="skip the forecasts at each model's limit")
    parser.add_argument("--check-only", action="store_true", help="only those, at the limits already stored")
    args = parser.parse_args()

    frames = storm(args.size)
    warm = frames[:, :: max(1, args.size // 128), :: max(1, args.size // 128)]  # small, with rain in it
    costs, checks = {}, []
    skipped = {}
    for name in [] if args.check_only else args.models:
        forecaster = load_forecaster(name)
        leads = forecaster.default_lead_steps
        if "deterministic" not in forecaster.outputs:  # the service's limit is for its rain-rate forecasts
            skipped[name] = f"offers {', '.join(forecaster.outputs)} output only"
            continue
        forecaster.predict(warm[-forecaster.frames_needed():], leads)  # first-call allocations
        costs[name] = {"fingerprint": forecaster.fingerprint, "pixels": args.size * args.size, "lead_steps": leads,
                       "input_steps": forecaster.input_steps, **timed(forecaster, frames, leads)}
        print(json.dumps({"model": name, **costs[name]}), file=sys.stderr, flush=True)
    measured = {"bench": "bench/cpu_forecast_limit.py", "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                "size": [args.size, args.size], "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    if args.write and costs:
        table = json.loads(CPU_COST.read_text()) if CPU_COST.is_file() else {"models": {}}
        table = {"measured": measured, "models": {**table["models"], **costs}}
        CPU_COST.write_text(json.dumps(table, indent=1) + "\n")
        from service import serving

        serving._cpu_cost_table.cache_clear()
    if not args.no_check:
        for name in args.models:
            forecaster = load_forecaster(name)
            limit = cpu_pixel_limit(forecaster, settings.inference_timeout_s)
            if limit is None or limit >= min(settings.max_grid_pixels, args.size * args.size):
                continue  # the cost run above was its forecast at the limit
            side = int(limit ** 0.5)
            grid = storm(side)
            forecaster.predict(warm[-forecaster.frames_needed():], forecaster.default_lead_steps)
            result = timed(forecaster, grid, forecaster.default_lead_steps)
            checks.append({"model": name, "limit_pixels": limit, "size": [side, side],
                           "lead_steps": forecaster.default_lead_steps, **result,
                           "within_timeout": result["wall_seconds"] <= settings.inference_timeout_s})
            print(json.dumps(checks[-1]), file=sys.stderr, flush=True)
    print(json.dumps({**measured, "pixels": args.size * args.size, "service_max_grid_pixels": settings.max_grid_pixels,
                      "inference_timeout_s": settings.inference_timeout_s,
                      "costs": [{"model": name, **cost, "within_timeout": cost["wall_seconds"]
                                 <= settings.inference_timeout_s} for name, cost in costs.items()],
                      "at_limit": checks, "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
