"""Sustained overload on loopback: N clients for S seconds against one model (JSON on stdout).

    python bench/service_load.py [--clients 32 --seconds 60 --model optical_flow --size 256
                                  --max-queue 8 --timeout 5 --max-inflight 8]

Starts ``nowcast serve`` with the given queue bound and inference timeout, then runs N closed-
loop clients posting inline 4 x SIZE x SIZE frames (12 leads) for S seconds. Reports requests/s,
status counts, p50/p99 latency of answered (200) and of all requests, the server's forward
passes and the forecasts it dropped (their clients had stopped waiting) or shed (503), and the
server's memory before and after. The point: latency stays bounded by the timeout, overload is
answered 503 + Retry-After at once, and no forecast is computed for a client already gone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from service_latency import start_server  # a sibling script


def counter(url: str, name: str, model: str) -> float:
    match = re.search(rf'{name}{{model="{model}"}} ([0-9.e+]+)', httpx.get(f"{url}/metrics").text)
    return float(match.group(1)) if match else 0.0


async def run_clients(url: str, body: dict, clients: int, seconds: float) -> tuple[list, float]:
    results: list[tuple[int, float]] = []
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                status = (await http.post(f"{url}/v1/forecast", json=body)).status_code
            except httpx.HTTPError:
                status = 0
            results.append((status, time.perf_counter() - started))
            if status == 503:
                await asyncio.sleep(0.5)  # a polite client honours (a part of) Retry-After

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return results, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--model", default="optical_flow")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--max-inflight", type=int, default=8)
    args = parser.parse_args()
    frames = np.round(np.random.default_rng(0).gamma(0.5, 2.0, size=(4, args.size, args.size)), 2).tolist()
    body = {"model": args.model, "lead_steps": 12, "frames": frames, "step_minutes": 5,
            "end_time": "2021-07-01T12:00:00Z"}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp), {"store": str(Path(tmp) / "none.zarr"), "models": [args.model],
                                      "max_queue": args.max_queue, "inference_timeout_s": args.timeout,
                                      "max_inflight": args.max_inflight})
        try:
            server = psutil.Process(proc.pid)
            httpx.post(f"{url}/v1/forecast", json=body, timeout=120)  # warm-up
            rss_before = server.memory_info().rss / 2**20
            passes_before = counter(url, "nowcast_forward_passes_total", args.model)
            results, elapsed = asyncio.run(run_clients(url, body, args.clients, args.seconds))
            rss_after = server.memory_info().rss / 2**20
            passes = counter(url, "nowcast_forward_passes_total", args.model) - passes_before
            dropped = counter(url, "nowcast_dropped_requests_total", args.model)
            shed = counter(url, "nowcast_shed_requests_total", args.model)
            healthz = httpx.get(f"{url}/healthz", timeout=5)
        finally:
            proc.terminate()
            proc.wait()
    statuses = Counter(s for s, _ in results)
    ok = [t for s, t in results if s == 200]
    every = [t for _, t in results]
    pct = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 1) if xs else None  # noqa: E731
    print(json.dumps({
        "workload": vars(args), "elapsed_s": round(elapsed, 1), "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 2), "answered_per_s": round(len(ok) / elapsed, 2),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms_200": pct(ok, 50), "p99_ms_200": pct(ok, 99),
        "p50_ms_all": pct(every, 50), "p99_ms_all": pct(every, 99),
        "forward_passes": int(passes), "dropped_unwaited": int(dropped), "shed_503": int(shed),
        "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1),
        "healthz_after": healthz.status_code,
    }, indent=2))


if __name__ == "__main__":
    main()
