"""``nowcast ingest --watch``: new files are ingested as they arrive, once each, across restarts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import sample_files

from pipelines.store import ProductArchive


def committed(store: str) -> int:
    archive = ProductArchive(store, "knmi")
    return archive.times().size if archive.exists() else 0


def start_watch(incoming: Path, store: str, log: Path) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("nowcast"))
    return subprocess.Popen(
        [exe, "ingest", "--watch", "--format", "knmi_hdf5", "--store", store, "--product", "knmi",
         "--interval", "0.2", "--settle", "0.3", str(incoming)],
        stdout=open(log, "w"), stderr=subprocess.DEVNULL,
    )


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def polls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_watch_ingests_arrivals_once_and_survives_a_restart(tmp_path: Path, store: str) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    files = sample_files("knmi", 9)
    for path in files[:3]:
        shutil.copy(path, incoming / path.name)
    first_log = tmp_path / "first.log"
    watcher = start_watch(incoming, store, first_log)
    try:
        wait_for(lambda: committed(store) == 3)
        for path in files[3:6]:  # arriving while it runs
            shutil.copy(path, incoming / path.name)
        wait_for(lambda: committed(store) == 6)
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
    assert sum(p["files"] for p in polls(first_log)) == 6
    # restart: the six are in the ledger and are not decoded again; newcomers are
    for path in files[6:]:
        shutil.copy(path, incoming / path.name)
    (incoming / "RAD_NL25_RAP_5min_broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    second_log = tmp_path / "second.log"
    watcher = start_watch(incoming, store, second_log)
    try:
        wait_for(lambda: committed(store) == 9)
        time.sleep(1.0)  # a few more polls: nothing must be taken twice
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
    second = polls(second_log)
    assert sum(p["files"] for p in second) == 4  # three new files and the broken one, once
    assert [Path(f["path"]).name for p in second for f in p["failed"]] == ["RAD_NL25_RAP_5min_broken.h5"]
    assert sum(p["already_present"] for p in second) == 0
    times = ProductArchive(store, "knmi").times()
    assert len(times) == 9 and (times[1:] > times[:-1]).all()


def test_watch_waits_for_another_writer_then_ingests(tmp_path: Path, store: str) -> None:
    """Cron or a manual ingest holding the product: the watcher says it waits, and takes the files
    once the other writer is gone (here: killed, so its lock is released by the kernel)."""
    from conftest import hold_writer_lock

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in sample_files("knmi", 3):
        shutil.copy(path, incoming / path.name)
    holder = hold_writer_lock(store, "knmi")
    log = tmp_path / "watch.log"
    exe = str(Path(sys.executable).with_name("nowcast"))
    watcher = subprocess.Popen(
        [exe, "ingest", "--watch", "--format", "knmi_hdf5", "--store", store, "--product", "knmi",
         "--interval", "0.5", "--settle", "0", str(incoming)], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_for(lambda: "waiting:" in log.read_text(), 60)
        assert committed(store) == 0
        holder.kill()
        holder.wait()
        wait_for(lambda: committed(store) == 3, 60)
    finally:
        holder.kill()
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=30)
    assert f"pid {holder.pid}" in log.read_text()
