"""Cost of live verification (JSON on stdout): keeping a forecast, scoring it, reading the window.

    python bench/live_verification.py [--frames 16 --leads 6 --data ../shared/data]

Ingests real MeteoSwiss frames (640 x 710, 2016-07-11) into a temporary store, keeps a
persistence forecast from every frame in the verification ledger (what the service does after
answering), runs one verification pass (what the service runs every ``verification_interval_s``)
and reads the rolling 24 h scores (``GET /v1/skill``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from nowcast.live_verification import VerificationLedger
from pipelines.ingest import ingest
from pipelines.store import ProductArchive

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--leads", type=int, default=6)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    files = sorted((args.data / "radar" / "mch" / "20160711").glob("*.gif"))[: args.frames]
    if not files:
        raise SystemExit(f"no MeteoSwiss GIFs under {args.data}/radar/mch/20160711")
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "archive.zarr")
        ingest(files, store, "mch", fmt="mch_gif", workers=1)
        archive, ledger = ProductArchive(store, "mch"), VerificationLedger(store, "mch")
        keep_s = []
        for init in archive.times():
            last = archive.window(length=1, end=init).frames
            forecast = np.repeat(last, args.leads, axis=0)  # persistence: the cost is in the size, not the model
            started = time.perf_counter()
            ledger.register("persistence", init, forecast, 5.0)
            keep_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        done = VerificationLedger(store, "mch").verify()
        pass_s = time.perf_counter() - started
        started = time.perf_counter()
        rolling = VerificationLedger(store, "mch").rolling(24)
        rolling_s = time.perf_counter() - started
    print(json.dumps({
        "product": "mch 2016-07-11", "grid": list(last.shape[1:]), "frames": len(files), "leads": args.leads,
        "keep_s_median": round(float(np.median(keep_s)), 4), "verified": done.scored, "waiting": done.waiting,
        "pass_s": round(pass_s, 3), "pass_s_per_forecast": round(pass_s / max(1, done.scored), 3),
        "rolling_s": round(rolling_s, 4), "records_read": sum(m["n_cases"] for m in rolling["models"]),
        "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
