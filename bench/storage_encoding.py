"""Benchmark Zarr v3 encodings/chunkings for the rain-rate archive (pipelines/store.py).

Decodes real radar frames once (pipelines.ingest.decode), writes them with each variant
through xarray (``Dataset.to_zarr(..., zarr_format=3, consolidated=True)``) and measures:

* ``bytes``/``files``: bytes and files (objects) under the store directory (os.walk),
* ``write_s``: wall time of ``to_zarr`` (including consolidated metadata),
* ``frames_per_s``: full-frame reads, one ``arr[t]`` per frame through ``zarr.open_array``,
  decoded here to float32 mm/h (scale_factor, _FillValue -> NaN); best of ``--repeats``,
* ``windows_per_s``: ``--windows`` random windows of 12 consecutive frames x 256 x 256 pixels
  (fixed seed, same windows for every variant), decoded likewise; best of ``--repeats``,
* ``max_abs_error_mm_h`` vs the float32 input on non-NaN pixels, and ``nan_preserved``
  (NaN exactly where the input is NaN).

Reads come right after the write, so the files are in the OS page cache: the read numbers
are decode (decompression + conversion) cost, not cold-disk I/O.

Prints one JSON document on stdout; progress goes to stderr.

    python bench/storage_encoding.py --product fmi --frames 40
    python bench/storage_encoding.py --product opera --frames 24
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from pipelines.ingest import decode
from pipelines.sample_data import SAMPLE_EVENTS, sample_event_files

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", category=UserWarning, module="zarr")

PRODUCTS = ("fmi", "opera")
VARIABLE = "precip"
WINDOW_T, WINDOW_YX = 12, 256


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_frames(product: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        files = sample_event_files(product, n)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    fmt = SAMPLE_EVENTS[product][1]
    t0 = time.perf_counter()
    frames = [decode(path, fmt) for path in files]
    log(f"decoded {len(frames)} {product} frames in {time.perf_counter() - t0:.1f}s")
    data = np.stack([f.rain_rate for f in frames]).astype(np.float32)
    times = np.array([f.time for f in frames], dtype="datetime64[ns]")
    return data, times


def blosc(clevel: int = 3, shuffle: str = "bitshuffle") -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle)


def variants(shape: tuple[int, int]) -> list[dict[str, Any]]:
    ny, nx = shape
    full = (1, ny, nx)
    c512 = (1, min(512, ny), min(512, nx))
    c256 = (1, min(256, ny), min(256, nx))
    u16 = {"dtype": "uint16", "scale_factor": np.float32(0.01), "_FillValue": np.uint16(65535)}
    # A shard must be a whole number of inner chunks: round the frame up to a multiple of 256.
    shard_round = (1, math.ceil(ny / 256) * 256, math.ceil(nx / 256) * 256)
    z3, z3s = "blosc zstd clevel=3 bitshuffle", "blosc zstd clevel=3 shuffle"
    return [
        {"name": "float32-plain-full", "compressor": "none",
         "enc": {"dtype": "float32", "chunks": full, "compressors": None}},
        {"name": "float32-zstd3-shuffle-512", "compressor": z3s,
         "enc": {"dtype": "float32", "chunks": c512, "compressors": (blosc(3, "shuffle"),)}},
        {"name": "float16-zstd3-bitshuffle-512", "compressor": z3,
         "enc": {"dtype": "float16", "chunks": c512, "compressors": (blosc(3),)}},
        {"name": "uint16x0.01-zstd3-bitshuffle-full", "compressor": z3,
         "enc": {**u16, "chunks": full, "compressors": (blosc(3),)}},
        {"name": "uint16x0.01-zstd3-bitshuffle-256", "compressor": z3,
         "enc": {**u16, "chunks": c256, "compressors": (blosc(3),)}},
        {"name": "uint16x0.01-zstd3-bitshuffle-512 (current)", "compressor": z3,
         "enc": {**u16, "chunks": c512, "compressors": (blosc(3),)}},
        {"name": "uint16x0.01-zstd3-bitshuffle-256-shard-frame", "compressor": z3,
         "enc": {**u16, "chunks": c256, "shards": full, "compressors": (blosc(3),)},
         "fallback_shards": shard_round},
        {"name": "uint16x0.01-zstd1-bitshuffle-512", "compressor": "blosc zstd clevel=1 bitshuffle",
         "enc": {**u16, "chunks": c512, "compressors": (blosc(1),)}},
        {"name": "uint16x0.01-zstd5-bitshuffle-512", "compressor": "blosc zstd clevel=5 bitshuffle",
         "enc": {**u16, "chunks": c512, "compressors": (blosc(5),)}},
    ]


def dir_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under path."""
    total = count = 0
    for dirpath, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, name)) for name in files)
        count += len(files)
    return total, count


def write(ds: xr.Dataset, path: Path, enc: dict[str, Any]) -> float:
    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True, encoding={VARIABLE: enc})
    return time.perf_counter() - t0


class Decoder:
    """Raw stored values -> float32 mm/h, as xarray would (fill -> NaN, then scale)."""

    def __init__(self, arr: zarr.Array):
        attrs = dict(arr.attrs)
        self.scale = attrs.get("scale_factor")
        self.offset = attrs.get("add_offset")
        self.integer = np.issubdtype(arr.dtype, np.integer)
        # Integer nodata is the CF _FillValue attribute (the zarr fill_value stays 0); float
        # arrays keep NaN as themselves (xarray stores their _FillValue base64-encoded).
        fill = attrs.get("_FillValue") if self.integer else None
        self.fill = None if fill is None else np.asarray(fill).astype(arr.dtype)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        out = raw.astype(np.float32)
        if self.integer and self.fill is not None:
            out[raw == self.fill] = np.nan
        if self.scale is not None:
            out *= np.float32(self.scale)
        if self.offset is not None:
            out += np.float32(self.offset)
        return out


def read_full(path: Path, repeats: int) -> tuple[float, np.ndarray]:
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        arr = zarr.open_array(str(path), path=VARIABLE, mode="r", zarr_format=3)
        dec = Decoder(arr)
        frames = [dec(arr[t]) for t in range(arr.shape[0])]
        best = min(best, time.perf_counter() - t0)
        result = frames
    return best, np.stack(result)


def read_windows(path: Path, windows: list[tuple[int, int, int]], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        arr = zarr.open_array(str(path), path=VARIABLE, mode="r", zarr_format=3)
        dec = Decoder(arr)
        for t, y, x in windows:
            w = dec(arr[t:t + WINDOW_T, y:y + WINDOW_YX, x:x + WINDOW_YX])
            assert w.shape == (WINDOW_T, WINDOW_YX, WINDOW_YX)
        best = min(best, time.perf_counter() - t0)
    return best


def describe_codecs(arr: zarr.Array) -> str:
    try:
        return "; ".join(type(c).__name__ for c in arr.metadata.codecs)
    except AttributeError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--product", choices=sorted(PRODUCTS), default="fmi")
    parser.add_argument("--out-dir", default=None,
                        help="where the stores go (default: a temp dir, removed afterwards)")
    parser.add_argument("--repeats", type=int, default=2, help="read repeats, best kept")
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args(argv)

    data, times = load_frames(args.product, args.frames)
    nt, ny, nx = data.shape
    nan_mask = np.isnan(data)
    log(f"shape {data.shape}, nodata {nan_mask.mean():.1%}, "
        f"max {np.nanmax(data):.2f} mm/h, rain>0 {(np.nan_to_num(data) > 0).mean():.1%}")
    ds = xr.Dataset({VARIABLE: (("time", "y", "x"), data, {"units": "mm/h"})}, coords={"time": times})

    rng = np.random.default_rng(args.seed)
    wt = min(WINDOW_T, nt)
    if nt < WINDOW_T or ny < WINDOW_YX or nx < WINDOW_YX:
        raise SystemExit(f"need at least {WINDOW_T} frames of {WINDOW_YX}x{WINDOW_YX}")
    windows = [
        (int(rng.integers(0, nt - wt + 1)),
         int(rng.integers(0, ny - WINDOW_YX + 1)),
         int(rng.integers(0, nx - WINDOW_YX + 1)))
        for _ in range(args.windows)
    ]

    own_tmp = args.out_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="storage_bench_") if own_tmp else args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    plain_bytes = None
    try:
        for i, v in enumerate(variants((ny, nx))):
            path = out_dir / f"{args.product}_{i:02d}.zarr"
            enc = dict(v["enc"])
            try:
                write_s = write(ds, path, enc)
            except Exception as exc:  # e.g. shards that are not a multiple of the chunks
                if "fallback_shards" not in v:
                    log(f"{v['name']}: write failed: {type(exc).__name__}: {exc}")
                    results.append({"name": v["name"], "error": f"{type(exc).__name__}: {exc}"})
                    continue
                log(f"{v['name']}: shards {enc['shards']} rejected ({type(exc).__name__}: {exc}); "
                    f"retrying with shards {v['fallback_shards']}")
                enc["shards"] = v["fallback_shards"]
                write_s = write(ds, path, enc)
            arr = zarr.open_array(str(path), path=VARIABLE, mode="r", zarr_format=3)
            nbytes, nfiles = dir_bytes(path)
            if plain_bytes is None:
                plain_bytes = nbytes
            full_s, back = read_full(path, args.repeats)
            win_s = read_windows(path, windows, args.repeats)
            valid = ~nan_mask
            diff = np.abs(back[valid].astype(np.float64) - data[valid])
            err = float(diff.max()) if diff.size else 0.0
            nan_ok = bool(np.array_equal(np.isnan(back), nan_mask))
            shards = getattr(arr, "shards", None)
            row = {
                "name": v["name"],
                "dtype": str(arr.dtype),
                "chunks": list(arr.chunks),
                "shards": list(shards) if shards else None,
                "compressor": v["compressor"],
                "codecs": describe_codecs(arr),
                "bytes": nbytes,
                "files": nfiles,
                "ratio_vs_float32_plain": round(plain_bytes / nbytes, 2),
                "write_s": round(write_s, 3),
                "frames_per_s": round(nt / full_s, 1),
                "windows_per_s": round(len(windows) / win_s, 1),
                "max_abs_error_mm_h": float(f"{err:.6g}"),
                "nan_preserved": nan_ok,
            }
            results.append(row)
            log(f"{row['name']:48s} {nbytes / 2**20:8.2f} MiB x{row['ratio_vs_float32_plain']:<6} "
                f"write {write_s:6.2f}s  {row['frames_per_s']:7.1f} frames/s  "
                f"{row['windows_per_s']:6.1f} windows/s  err {err:.4g}  nan_ok {nan_ok}")
            if not args.keep:
                shutil.rmtree(path)
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)

    print(json.dumps({
        "product": args.product,
        "frames": int(nt),
        "shape": [int(ny), int(nx)],
        "nodata_fraction": round(float(nan_mask.mean()), 4),
        "read_repeats": args.repeats,
        "windows": {"count": len(windows), "frames": wt,
                    "pixels": [WINDOW_YX, WINDOW_YX], "seed": args.seed},
        "zarr": zarr.__version__,
        "xarray": xr.__version__,
        "variants": results,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
