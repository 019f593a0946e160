"""Windows/s from the Zarr archive (0, 1, 2 DataLoader workers) against a raw numpy memmap.

    python bench/dataset_throughput.py [--store S --product P] [--crop 256] [--windows 256]

Without --store it ingests the FMI sample (../shared/data) into a temporary store first.
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
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


class MemmapWindows(Dataset):
    """Same windows, crops and normalisation as SequenceDataset, read from a float32 memmap."""

    def __init__(self, path: Path, shape: tuple[int, ...], reference: SequenceDataset):
        self.path, self.shape, self.ref = path, shape, reference
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.ref)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.float32, mode="r", shape=self.shape)
        start = int(self.ref.starts[index])
        rng = np.random.default_rng([0, 0, index])
        size = self.ref.crop or self.shape[1]
        y0 = int(rng.integers(0, self.shape[1] - size + 1))
        x0 = int(rng.integers(0, self.shape[2] - size + 1))
        rate = np.array(self._data[start : start + self.ref.t_in + self.ref.t_out, y0 : y0 + size, x0 : x0 + size])
        z = self.ref.normalizer.forward(np.nan_to_num(rate)).astype(np.float32)
        z = torch.from_numpy(z[:, None])
        return {"inputs": z[: self.ref.t_in], "targets": z[self.ref.t_in :], "mask": torch.from_numpy(~np.isnan(rate))}


def windows_per_second(dataset: Dataset, workers: int, windows: int, batch_size: int) -> float:
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
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
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
    dataset = SequenceDataset(store, args.product, args.t_in, args.t_out, crop=args.crop)
    frames = dataset._decode(dataset.array[:])
    memmap_path = tmp / "frames.f32"
    mm = np.memmap(memmap_path, dtype=np.float32, mode="w+", shape=frames.shape)
    mm[:] = frames
    mm.flush()
    memmap = MemmapWindows(memmap_path, frames.shape, dataset)
    results = {"store": store, "product": args.product, "grid": list(frames.shape[1:]),
               "window": {"t_in": args.t_in, "t_out": args.t_out, "crop": args.crop},
               "batch_size": args.batch_size, "windows_measured": args.windows, "zarr": {}, "memmap": {}}
    for workers in (0, 1, 2):
        key = f"workers_{workers}"
        for name, source in (("zarr", dataset), ("memmap", memmap)):
            results[name][key] = round(windows_per_second(source, workers, args.windows, args.batch_size), 1)
        print(f"workers={workers}: zarr {results['zarr'][key]} vs memmap {results['memmap'][key]}", file=sys.stderr)
    results["zarr_over_memmap"] = {
        k: round(results["zarr"][k] / results["memmap"][k], 3) for k in results["zarr"]
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
