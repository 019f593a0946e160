"""One writer per product: a lock that ``kill -9`` cannot leave stuck.

Why: two writers interleaving resizes, merges and commits on one product corrupt it (frames
lost, duplicated, filed under the wrong time). Every write to a product therefore holds its
writer lock; ``nowcast ingest`` holds it for the whole run, so a second run waits up to its
``--lock-timeout`` and then exits with a message naming the holder.

- Local stores: ``fcntl.flock`` on ``<store>/_locks/<product>.lock``. The kernel drops the lock
  when the holder dies, however it dies; the file only records who holds it, for the message.
- Object stores (fsspec URLs): a lease object ``_locks/<product>.json`` holding an owner token
  and an expiry, renewed by a heartbeat thread every ``LEASE_SECONDS / 3``. A killed holder's
  lease expires after ``LEASE_SECONDS``. Object stores offer no compare-and-swap here, so the
  lease is taken by write, wait ``SETTLE_SECONDS``, read back: two writers racing inside that
  window is the one case it cannot exclude.

The lock is re-entrant within a process (the ingest run holds it, each batch write takes it
again), never across processes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOCK_GROUP = "_locks"
#: sysexits' EX_TEMPFAIL, the exit code of a command that found another writer or run busy: try later
EXIT_BUSY = 75
#: a dead holder's lease lasts this long (NOWCAST_LEASE_SECONDS; tests shorten it)
LEASE_SECONDS = float(os.environ.get("NOWCAST_LEASE_SECONDS", "60"))
SETTLE_SECONDS = 0.5
POLL_SECONDS = 0.2

_held: dict[tuple[str, str], int] = {}
_held_guard = threading.Lock()


class WriterBusy(RuntimeError):
    """Another process is writing to this product."""


def _holder_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _is_local(store: str) -> bool:
    return "://" not in store or store.startswith("file://")


@contextmanager
def writer_lock(store: str, product: str, timeout: float = 0.0,
                storage_options: dict | None = None) -> Iterator[None]:
    """Hold ``product``'s writer lock in ``store``; wait up to ``timeout`` s, then raise WriterBusy."""
    key = (str(store), product)
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock = _LocalLock(store, product) if _is_local(store) else _LeaseLock(store, product, storage_options)
    lock.acquire(timeout)
    with _held_guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        lock.release()


def _busy(store: str, product: str, holder: dict | None, timeout: float) -> WriterBusy:
    waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
    return WriterBusy(
        f"product '{product}' in {store} is being written by {_holder_text(holder)}{waited}; "
        "one writer per product: wait for it to finish, or pass --lock-timeout SECONDS to wait longer"
    )


class _LocalLock:
    def __init__(self, store: str, product: str):
        import zarr

        from pipelines.zarr_groups import require_group

        root = store.removeprefix("file://")
        os.makedirs(root, exist_ok=True)
        # a group, so zarr's listings do not warn about a stray folder; other writers may be creating it too
        require_group(zarr.storage.LocalStore(root), LOCK_GROUP)
        self.store, self.product = store, product
        self.path = os.path.join(root, LOCK_GROUP, f"{product}.lock")
        self.fd: int | None = None

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self, timeout: float) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(fd)
                    raise _busy(self.store, self.product, holder, timeout) from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _LeaseLock:
    def __init__(self, store: str, product: str, storage_options: dict | None):
        import fsspec

        from pipelines.store import fsspec_options

        self.store, self.product = store, product
        self.fs, _, paths = fsspec.get_fs_token_paths(store, storage_options=fsspec_options(storage_options))
        self.path = f"{paths[0].rstrip('/')}/{LOCK_GROUP}/{product}.json"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        lease = dict(_me(), owner=self.token, expires=time.time() + LEASE_SECONDS)
        self.fs.pipe_file(self.path, json.dumps(lease).encode())

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current = self._read()
            if current is None or current.get("expires", 0) < time.time() or current.get("owner") == self.token:
                self._write()
                time.sleep(SETTLE_SECONDS)
                current = self._read()
                if current is not None and current.get("owner") == self.token:
                    break
            if time.monotonic() >= deadline:
                raise _busy(self.store, self.product, current, timeout)
            time.sleep(POLL_SECONDS)
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name=f"lease-{self.product}")
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self._write()
            except Exception:  # a missed renewal is retried; expiry is a minute away
                pass

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        current = self._read()
        if current is not None and current.get("owner") == self.token:
            self.fs.rm_file(self.path)
