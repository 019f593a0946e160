"""Windows/s from the Zarr archive against a raw float32 memmap, interleaved in one process.

    python bench/dataset_throughput.py [--store S --product P] [--crop 256] [--windows 128]
        [--workers 0 1 2] [--rounds 5] [--min-rain-fraction 0.05] [--float-path]

``--float-path`` adds a third source: the same store read through the float path (decode to
mm/h, then the normaliser) instead of the lookup from 8/16-bit codes to model space.

Without --store it ingests the FMI sample (../shared/data) into a temporary store first.
``--crop 0`` reads whole frames. This machine drifts 10-20 % and shares its 2 cores with other
jobs, so the two sources are timed in alternating rounds (who goes first alternates too): each
round runs every worker count for Zarr and memmap back to back, and the report gives the median
rate of each and the median of the per-round ratios. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.dataset import SequenceDataset
from pipelines.ingest import ingest
from pipelines.sample_data import FMI_SUBDIR, find_sample_data_dir


class FloatPathWindows(SequenceDataset):
    """The archive's windows without the code -> model-space lookup (what it did before it)."""

    def _model_space_tables(self, dtype: np.dtype) -> None:
        return None


class MemmapWindows(Dataset):
    """Same windows, crops (rain-fraction retries included) and normalisation as
    SequenceDataset, read from a float32 memmap of the decoded frames: the raw-read yardstick."""

    def __init__(self, path: Path, shape: tuple[int, ...], reference: SequenceDataset):
        self.path, self.shape, self.ref = path, shape, reference
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.ref)

    def _pick_crop(self, start: int, rng: np.random.Generator) -> tuple[int, int]:
        """SequenceDataset._pick_crop's draws and choice (train split), on the memmap."""
        ref, (ny, nx) = self.ref, self.shape[1:]
        size = ref.crop
        if not size:
            return 0, 0
        if ref.min_rain_fraction <= 0:
            return int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
        best, best_fraction = (0, 0), -1.0
        for _ in range(ref.crop_tries):
            y0, x0 = int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
            frame = self._data[start + ref.t_in - 1, y0 : y0 + size, x0 : x0 + size]
            fraction = np.count_nonzero(frame >= ref.rain_threshold) / frame.size
            if fraction >= ref.min_rain_fraction:
                return y0, x0
            if fraction > best_fraction:
                best, best_fraction = (y0, x0), fraction
        return best

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.float32, mode="r", shape=self.shape)
        ref = self.ref
        start = int(ref.starts[index])
        y0, x0 = self._pick_crop(start, np.random.default_rng([ref.seed, 0, index]))
        ny, nx = (ref.crop, ref.crop) if ref.crop else self.shape[1:]
        rate = np.array(self._data[start : start + ref.t_in + ref.t_out, y0 : y0 + ny, x0 : x0 + nx])
        valid = ~np.isnan(rate)
        z = torch.from_numpy(ref.normalizer.forward(np.nan_to_num(rate, nan=0.0)).astype(np.float32)[:, None])
        mask = torch.from_numpy(valid[:, None])
        return {"inputs": z[: ref.t_in], "targets": z[ref.t_in :],
                "input_mask": mask[: ref.t_in], "target_mask": mask[ref.t_in :]}


def windows_per_second(dataset: Dataset, workers: int, windows: int, batch_size: int) -> float:
    """Rate after the first batch (worker start-up excluded); same shuffled order every call."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(0), persistent_workers=False,
    )
    seen, started = 0, None
    for batch in loader:
        if started is None:  # exclude worker start-up from the rate
            started = time.perf_counter()
            continue
        seen += batch["inputs"].shape[0]
        if seen >= windows:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store")
    parser.add_argument("--product", default="fmi")
    parser.add_argument("--t-in", type=int, default=6)
    parser.add_argument("--t-out", type=int, default=6)
    parser.add_argument("--crop", type=int, default=256, help="0: whole frames")
    parser.add_argument("--windows", type=int, default=128, help="windows timed per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-rain-fraction", type=float, default=0.0,
                        help="crop retries as in training (the configs use 0.05-0.1)")
    parser.add_argument("--float-path", action="store_true",
                        help="also time the store through the float path (no code -> model-space lookup)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nowcast-bench-"))
    store = args.store
    if store is None:
        data = find_sample_data_dir()
        if data is None:
            raise SystemExit("no sample data: pass --store or set NOWCAST_SAMPLE_DATA")
        store = str(tmp / "bench.zarr")
        print(f"ingesting {data / FMI_SUBDIR} into {store}", file=sys.stderr)
        ingest([data / FMI_SUBDIR], store, args.product, fmt="fmi_pgm", workers=2)
    dataset = SequenceDataset(store, args.product, args.t_in, args.t_out, crop=args.crop or None,
                              min_rain_fraction=args.min_rain_fraction)
    frames = dataset._decode(dataset.array[:])
    memmap_path = tmp / "frames.f32"
    mm = np.memmap(memmap_path, dtype=np.float32, mode="w+", shape=frames.shape)
    mm[:] = frames
    mm.flush()
    del mm
    dataset._array = None  # no handle opened here rides into the workers
    memmap = MemmapWindows(memmap_path, frames.shape, dataset)
    sources: dict[str, Dataset] = {"zarr": dataset, "memmap": memmap}
    if args.float_path:
        sources["zarr_float_path"] = FloatPathWindows(
            store, args.product, args.t_in, args.t_out, crop=args.crop or None,
            min_rain_fraction=args.min_rain_fraction)
    rates: dict[str, dict[int, list[float]]] = {name: {w: [] for w in args.workers} for name in sources}
    for round_ in range(args.rounds):
        order = list(sources) if round_ % 2 == 0 else list(reversed(sources))
        for workers in args.workers:
            for name in order:
                rates[name][workers].append(windows_per_second(sources[name], workers, args.windows, args.batch_size))
            print(f"round {round_} workers={workers}: " + " vs ".join(
                f"{name} {rates[name][workers][-1]:.1f}" for name in sources), file=sys.stderr)
    results = {"store": store, "product": args.product, "grid": list(frames.shape[1:]),
               "window": {"t_in": args.t_in, "t_out": args.t_out, "crop": args.crop or None,
                          "min_rain_fraction": args.min_rain_fraction},
               "batch_size": args.batch_size, "windows_measured": args.windows, "rounds": args.rounds,
               "load_average": os.getloadavg(), "per_round": {}}
    for workers in args.workers:
        key = f"workers_{workers}"
        results["per_round"][key] = {}
        m = rates["memmap"][workers]
        for name in sources:
            results.setdefault(name, {})[key] = round(statistics.median(rates[name][workers]), 1)
            results["per_round"][key][name] = [round(r, 1) for r in rates[name][workers]]
            if name != "memmap":
                ratios = [a / b for a, b in zip(rates[name][workers], m, strict=True)]
                results.setdefault(f"{name}_over_memmap", {})[key] = round(statistics.median(ratios), 3)
                results["per_round"][key][f"{name}_over_memmap"] = [round(r, 3) for r in ratios]
    print(json.dumps(results, indent=2))

if __name__ == "__main__":
    main()
