"""Where the test suite's wall time goes: each test's wall time against the CPU it used.

    CPU_WALL_DIR=/tmp/cpu_wall PYTHONPATH=bench python -m pytest -q -p suite_cpu_wall   # record
    python bench/suite_cpu_wall.py /tmp/cpu_wall                                        # summarise (JSON)

As a pytest plugin (``-p suite_cpu_wall``) it appends one JSON line per test to
``$CPU_WALL_DIR/<xdist worker>.jsonl``: wall seconds, and the CPU seconds of the test's process
and of the children it reaped (``getrusage``) while the test ran. Run as a script it prints the
suite's span, the sums, each worker's busy time and the tests that wait most (low CPU / wall):
those leave a core idle, which is what an extra xdist worker fills (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import pytest


def _cpu_seconds() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    started, (own0, children0) = time.time(), _cpu_seconds()
    yield
    wall, (own1, children1) = time.time() - started, _cpu_seconds()
    folder = Path(os.environ.get("CPU_WALL_DIR", "cpu_wall"))
    folder.mkdir(parents=True, exist_ok=True)
    row = {"id": item.nodeid, "start": started, "wall": wall, "cpu": own1 - own0 + children1 - children0}
    with (folder / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def summary(folder: Path, top: int = 20) -> dict[str, Any]:
    workers = {path.stem: [json.loads(line) for line in path.open()] for path in sorted(folder.glob("*.jsonl"))}
    rows = [row for worker in workers.values() for row in worker]
    if not rows:
        raise SystemExit(f"no test rows under {folder}: run pytest with -p suite_cpu_wall first")
    start = min(r["start"] for r in rows)
    wall, cpu = sum(r["wall"] for r in rows), sum(r["cpu"] for r in rows)
    waiting = sorted((r for r in rows if r["wall"] >= 10), key=lambda r: r["cpu"] / r["wall"])[:top]
    return {
        "tests": len(rows),
        "span_s": round(max(r["start"] + r["wall"] for r in rows) - start, 1),
        "sum_wall_s": round(wall, 1),
        "sum_cpu_s": round(cpu, 1),
        "cpu_over_wall": round(cpu / wall, 2),
        "workers": {name: {"tests": len(worker), "busy_s": round(sum(r["wall"] for r in worker), 1),
                           "ends_at_s": round(max(r["start"] + r["wall"] for r in worker) - start, 1)}
                    for name, worker in workers.items()},
        "slowest": [{"id": r["id"], "wall_s": round(r["wall"], 1), "cpu_s": round(r["cpu"], 1)}
                    for r in sorted(rows, key=lambda r: -r["wall"])[:top]],
        "most_waiting": [{"id": r["id"], "wall_s": round(r["wall"], 1), "cpu_over_wall": round(r["cpu"] / r["wall"], 2)}
                         for r in waiting],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(summary(args.folder, args.top), indent=2))


if __name__ == "__main__":
    main()
