"""Forecast service latency and throughput, micro-batching on and off (JSON on stdout).

    python bench/service_latency.py [--requests 96 --size 128 --lead 6 --concurrency 1 8 32]

Starts ``nowcast serve`` twice on loopback (batching on, then off) with a ConvLSTM
(2 x 32 channels, patch 4; untrained weights, which cost the same to run) and posts inline
T x H x W frames from N concurrent clients. Reports p50/p99 latency, requests/s and the
mean batch size the server formed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml

from nowcast.models import get_model

NOWCAST = str(Path(sys.executable).with_name("nowcast"))


def make_checkpoint(path: Path) -> None:
    kwargs = {"hidden": [32, 32], "kernel": 3, "patch": 4}
    model = get_model("convlstm", **kwargs)
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
                "nowcast": {"model": "convlstm", "model_kwargs": kwargs, "t_in": 4, "t_out": 12, "step_minutes": 5.0,
                            "normalization": {"kind": "log"}, "data": {}}}, path)


def start_server(tmp: Path, settings: dict, name: str = "service") -> tuple[subprocess.Popen, str]:
    """``nowcast serve`` on a free loopback port with ``settings`` (YAML); waits for /healthz."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    proc = subprocess.Popen([NOWCAST, "serve", "--config", str(config), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def serve(tmp: Path, checkpoint: Path, batching: bool) -> tuple[subprocess.Popen, str]:
    return start_server(tmp, {"store": str(tmp / "none.zarr"), "models": [f"convlstm={checkpoint}"],
                              "micro_batching": batching, "batch_wait_ms": 5, "max_batch_size": 32},
                        f"service-{batching}")


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r'nowcast_batch_size_sum{model="convlstm"} ([0-9.e+]+)', text).group(1))
    count = float(re.search(r'nowcast_batch_size_count{model="convlstm"} ([0-9.e+]+)', text).group(1))
    return total, count


async def load(url: str, body: dict, concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/forecast", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:
        await http.post(f"{url}/v1/forecast", json=body)  # warm-up
        before = batch_stats(url)
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    after = batch_stats(url)
    passes = after[1] - before[1]
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "requests_per_s": round(requests / elapsed, 2),
        "forward_passes": int(passes),
        "mean_batch": round((after[0] - before[0]) / passes, 2) if passes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lead", type=int, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    frames = np.round(np.random.default_rng(0).gamma(0.5, 2.0, size=(4, args.size, args.size)), 2).tolist()
    body = {"model": "convlstm", "lead_steps": args.lead, "frames": frames, "step_minutes": 5,
            "end_time": "2021-07-01T12:00:00Z"}
    results = {"workload": vars(args), "torch_threads": torch.get_num_threads(), "batching_on": {},
               "batching_off": {}}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "convlstm.ckpt"
        make_checkpoint(checkpoint)
        for batching in (True, False):
            proc, url = serve(Path(tmp), checkpoint, batching)
            try:
                for n in args.concurrency:
                    stats = asyncio.run(load(url, body, n, args.requests))
                    results["batching_on" if batching else "batching_off"][f"clients_{n}"] = stats
                    print(f"batching={batching} clients={n}: {stats}", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
