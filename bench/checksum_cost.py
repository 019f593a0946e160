"""What the crc32c checksum on every chunk costs (pipelines.integrity, docs/storage.md "Checksums").

Decodes real radar frames once (pipelines.ingest.decode), then for each variant (``crc32c``: the
archive as written now; ``none``: the same encoding without the checksum codec, as stores written
before it) writes them through the archive's own path (``ProductArchive.write``, in batches of
``--batch``) into a fresh store, and measures:

* ``write_s``: wall time of the writes (commit included); ``bytes``: bytes under the product;
* ``frames_per_s``: whole frames read through zarr (``archive.open()``, one frame per read): the
  service's and evaluate's path, through the checked store;
* ``windows_per_s``: random 12-frame x 256 x 256 windows through ``pipelines.chunk_read`` (the
  training path, which checks the checksum itself); ``check_s``: ``nowcast store check``'s pass.

Reads follow the write, so files are in the page cache: the numbers are the CPU cost. Best of
``--repeats`` for reads. Prints one JSON document; progress goes to stderr.

    python bench/checksum_cost.py --product fmi --frames 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import pipelines.store as store_module
from pipelines.check import check_store
from pipelines.chunk_read import local_chunk_array
from pipelines.ingest import decode
from pipelines.sample_data import SAMPLE_EVENTS, sample_event_files
from pipelines.store import ProductArchive

WINDOW_T, WINDOW_YX = 12, 256


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def without_checksum():
    """The store's encodings with the crc32c codec left out (how older stores were written)."""
    saved = store_module.precip_encoding, store_module.TIME_ENCODING, store_module.DEFAULT_COMPRESSORS
    plain = tuple(c for c in saved[2] if type(c).__name__ != "Crc32cCodec")

    def precip_encoding(shape):
        enc = saved[0](shape)
        return {**enc, "compressors": tuple(c for c in enc["compressors"] if type(c).__name__ != "Crc32cCodec")}

    store_module.precip_encoding = precip_encoding
    store_module.TIME_ENCODING = {**saved[1], "compressors": plain}
    store_module.DEFAULT_COMPRESSORS = plain
    try:
        yield
    finally:
        store_module.precip_encoding, store_module.TIME_ENCODING, store_module.DEFAULT_COMPRESSORS = saved


def du(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure(frames: list, product: str, checksum: bool, repeats: int, windows: int, batch: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="checksum-bench-"))
    try:
        store = str(tmp / "a.zarr")
        archive = ProductArchive(store, product)
        t0 = time.perf_counter()
        with (without_checksum() if not checksum else _nothing()):
            for i in range(0, len(frames), batch):
                archive.write(frames[i : i + batch])
        write_s = time.perf_counter() - t0
        n = len(frames)
        best_frames = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            with archive.open() as ds:
                for t in range(n):
                    _ = ds["precip"][t].values
            best_frames = max(best_frames, n / (time.perf_counter() - t0))
        array = local_chunk_array(zarr.open_array(archive._zstore, path="precip", mode="r", zarr_format=3))
        ny, nx = array.shape[1:]
        rng = np.random.default_rng(0)
        picks = [(int(rng.integers(0, n - WINDOW_T + 1)), int(rng.integers(0, ny - WINDOW_YX + 1)),
                  int(rng.integers(0, nx - WINDOW_YX + 1))) for _ in range(windows)]
        best_windows = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t, y, x in picks:
                array[t : t + WINDOW_T, y : y + WINDOW_YX, x : x + WINDOW_YX]
            best_windows = max(best_windows, windows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        status = check_store(store)["status"]
        check_s = time.perf_counter() - t0
        return {"variant": "crc32c" if checksum else "none", "frames": n, "write_s": round(write_s, 3),
                "bytes": du(tmp / "a.zarr" / product), "frames_per_s": round(best_frames, 1),
                "windows_per_s": round(best_windows, 1), "check_s": round(check_s, 3), "check_status": status}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _nothing():
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="fmi", choices=sorted(SAMPLE_EVENTS))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    files = sample_event_files(args.product, args.frames)
    fmt = SAMPLE_EVENTS[args.product][1]
    frames = [decode(path, fmt) for path in files]
    log(f"decoded {len(frames)} {args.product} frames")
    results = []
    for checksum in (False, True, False, True):  # interleaved: the machine's load drifts
        results.append(measure(frames, args.product, checksum, args.repeats, args.windows, args.batch))
        log(json.dumps(results[-1]))
    print(json.dumps({"product": args.product, "shape": list(frames[0].rain_rate.shape), "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
