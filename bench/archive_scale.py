"""How the archive's everyday costs grow with its length: 400, 4,000 and 38,038 frames of TAASRAD19.

Each operation is timed on stores of the real Trentino radar (64 x 64, 5 min) cut to each length:
``store info``, opening the product, planning the training windows (the whole archive, its gaps
included), building the train/val/test datasets (month split, rainy windows), reading one window,
the service's "latest frames" lookup and backfill planning (one day of init times). Prints JSON:
per operation the seconds at each length and the growth exponent between the shortest and the
longest store (1.0 = linear; nothing may be quadratic, 2.0).

    python bench/archive_scale.py [--full data/taasrad19.zarr] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from pipelines.datamodule import RadarDataModule
from pipelines.dataset import _WET_FRACTIONS
from pipelines.info import store_summary
from pipelines.ingest import ingest
from pipelines.query import plan_windows
from pipelines.store import ProductArchive

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar" / "taasrad19"
PRODUCT = "taasrad19"
SPLIT = {"val": ["2016-07"], "test": ["2016-09", "2016-10", "2016-11"]}


def _store_of(frames: int, folder: Path) -> str:
    """A store of the archive's first ``frames`` frames (the months in order)."""
    store = str(folder / f"t{frames}.zarr")
    left, parts = frames, []
    for path in sorted(DATA.glob("taasrad19_*.nc")):
        if left <= 0:
            break
        with xr.open_dataset(path) as ds:
            take = min(left, ds.sizes["time"])
            part = folder / f"{path.stem}_{take}.nc"
            ds.isel(time=slice(0, take)).to_netcdf(part)
        parts.append(part)
        left -= take
    report = ingest(parts, store, PRODUCT, fmt="cf_netcdf", batch_size=256)
    assert report.exit_code == 0, report.failed
    return store


def _timed(operation: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def operations(store: str) -> dict[str, Callable[[], object]]:
    archive = ProductArchive(store, PRODUCT)
    times = archive.times()
    last_day = (str(times[-1] - np.timedelta64(1, "D")), str(times[-1]))

    def datasets() -> None:
        _WET_FRACTIONS.clear()  # measure the work, not the per-process cache
        module = RadarDataModule(store, [PRODUCT], t_in=4, t_out=12, crop=None, split_months=SPLIT,
                                 min_window_rain=0.01, num_workers=0)
        module.setup("fit")

    return {
        "store_info": lambda: store_summary(store, PRODUCT),
        "open_product": lambda: ProductArchive(store, PRODUCT).open().close(),
        "read_times": lambda: ProductArchive(store, PRODUCT).times(),
        "plan_training_windows": lambda: plan_windows(times, 4, 12, 5.0, None, None, 1),
        "build_datasets": datasets,
        "read_one_window": lambda: ProductArchive(store, PRODUCT).window(length=16, end=str(times[len(times) // 2])),
        "latest_frames": lambda: ProductArchive(store, PRODUCT).window(length=4),
        "backfill_planning": lambda: plan_windows(ProductArchive(store, PRODUCT).times(), 4, 0, 5.0, *last_day, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", default="data/taasrad19.zarr", help="the whole archive, if already ingested")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[400, 4000])
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {n: _store_of(n, Path(tmp)) for n in args.sizes}
        full = args.full if ProductArchive(args.full, PRODUCT).exists() else _store_of(10**6, Path(tmp))
        stores[len(ProductArchive(full, PRODUCT).times())] = full
        for frames, store in sorted(stores.items()):
            for name, operation in operations(store).items():
                results.setdefault(name, {})[str(frames)] = round(_timed(operation, args.repeats), 4)
    sizes = sorted(int(n) for n in next(iter(results.values())))
    ratio = sizes[-1] / sizes[0]
    growth = {name: round(math.log(max(row[str(sizes[-1])], 1e-6) / max(row[str(sizes[0])], 1e-6)) / math.log(ratio), 2)
              for name, row in results.items()}
    print(json.dumps({"frames": sizes, "seconds": results, "growth_exponent": growth,
                      "note": "median of --repeats runs; exponent 1 = linear in frames, 0 = constant"}, indent=2))


if __name__ == "__main__":
    main()
