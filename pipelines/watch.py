"""Near-real-time ingest: watch directories, ingest each new file once, survive restarts.

Which files were taken is kept in a ledger inside the store (``_ingest_ledger/<product>.json``,
keyed by path, size and modification time), written after each commit, so a restart (or
another machine pointed at the same store) skips them. A file is taken only once it has not
changed for ``settle_seconds`` (still being copied otherwise). A crash between a commit and
the ledger write costs at most a re-decode: ingest itself is idempotent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec

from pipelines.ingest import IngestReport, discover, ingest
from pipelines.locking import WriterBusy
from pipelines.store import fsspec_options


class Ledger:
    def __init__(self, store: str, product: str, storage_options: dict | None = None):
        self.fs, _, (root,) = fsspec.get_fs_token_paths(store, storage_options=fsspec_options(storage_options))
        self.path = f"{root.rstrip('/')}/_ingest_ledger/{product}.json"
        self.entries: dict[str, str] = {}
        if self.fs.exists(self.path):
            self.entries = json.loads(self.fs.cat_file(self.path))

    @staticmethod
    def key(path: Path) -> tuple[str, str]:
        stat = path.stat()
        return str(path.resolve()), f"{stat.st_size}:{stat.st_mtime_ns}"

    def seen(self, path: Path) -> bool:
        name, version = self.key(path)
        return self.entries.get(name) == version

    def add(self, paths: Iterable[Path]) -> None:
        for path in paths:
            name, version = self.key(path)
            self.entries[name] = version

    def save(self) -> None:
        data = json.dumps(self.entries, indent=0).encode()
        if "file" in self.fs.protocol:  # local: temp file + rename, never a half-written ledger
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            temporary = f"{self.path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, self.path)
        else:  # object stores: one PUT
            self.fs.pipe_file(self.path, data)


def watch(
    directories: list[Path], store: str, product: str, fmt: str = "auto", workers: int = 1, batch_size: int = 16,
    interval: float = 10.0, settle_seconds: float = 2.0, max_polls: int | None = None,
    on_report: Callable[[int, IngestReport], None] | None = None,
) -> None:
    """Poll until SIGTERM/SIGINT (or ``max_polls``), ingesting files not in the ledger."""
    for directory in directories:
        if not Path(directory).is_dir():
            raise NotADirectoryError(f"--watch needs directories; {directory} is not one")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    ledger = Ledger(store, product)
    polls = 0
    try:
        while not stopping and (max_polls is None or polls < max_polls):
            polls += 1
            now = time.time()
            fresh = [
                path for path in discover(directories)
                if not ledger.seen(path) and now - path.stat().st_mtime >= settle_seconds
            ]
            if fresh:
                try:
                    report = ingest(fresh, store, product, fmt=fmt, workers=workers, batch_size=batch_size,
                                    files=fresh, lock_timeout=interval)
                except WriterBusy as exc:  # another writer (cron, a manual run): try at the next poll
                    print(f"waiting: {exc}", file=sys.stderr, flush=True)
                    continue
                ledger.add(fresh)  # rejected files too: they are reported once, retried only if they change
                ledger.save()
                if on_report:
                    on_report(polls, report)
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, interval))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
