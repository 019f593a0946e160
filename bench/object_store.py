"""Training windows/s from an S3 archive against the same archive on local disk (JSON on stdout).

    python bench/object_store.py [--crop 256 --windows 128 --batch-size 8]

Starts moto's S3 server in a process of its own on loopback (what the tests use; MinIO in
docker-compose), ingests the FMI sample (../shared/data) into a local store and into
``s3://bench/archive.zarr``, then reads the same random training windows from each with 0 and
2 DataLoader workers. Loopback has no network latency: a real bucket adds round trips, which
more loader workers hide.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from dataset_throughput import windows_per_second  # a sibling script

from pipelines.sample_data import FMI_SUBDIR, find_sample_data_dir


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    data = find_sample_data_dir()
    if data is None:
        raise SystemExit("no sample data: set NOWCAST_SAMPLE_DATA")
    proc, endpoint = start_moto()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      FSSPEC_S3_ENDPOINT_URL=endpoint)
    import fsspec

    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    from pipelines.dataset import SequenceDataset
    from pipelines.ingest import ingest

    try:
        fsspec.filesystem("s3").mkdir("bench")
        stores = {"local": str(Path(tempfile.mkdtemp(prefix="nowcast-bench-")) / "archive.zarr"),
                  "s3": "s3://bench/archive.zarr"}
        results: dict = {"window": {"t_in": 6, "t_out": 6, "crop": args.crop}, "batch_size": args.batch_size,
                         "windows_measured": args.windows, "endpoint": "moto_server on loopback"}
        for name, store in stores.items():
            ingest([data / FMI_SUBDIR], store, "fmi", fmt="fmi_pgm", workers=2)
            dataset = SequenceDataset(store, "fmi", 6, 6, crop=args.crop)
            results[name] = {}
            for workers in (0, 2):
                rate = windows_per_second(dataset, workers, args.windows, args.batch_size)
                results[name][f"workers_{workers}"] = round(rate, 1)
                print(f"{name} workers={workers}: {rate:.1f} windows/s", file=sys.stderr)
        results["s3_over_local"] = {k: round(results["s3"][k] / results["local"][k], 3) for k in results["local"]}
        print(json.dumps(results, indent=2))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
