"""One writer per product: a lock that ``kill -9`` cannot leave stuck.

Why: two writers interleaving resizes, merges and commits on one product corrupt it (frames
lost, duplicated, filed under the wrong time). Every write to a product therefore holds its
writer lock; ``nowcast ingest`` holds it for the whole run, so a second run waits up to its
``--lock-timeout`` and then exits with a message naming the holder.

- Local stores: ``fcntl.flock`` on ``<store>/_locks/<product>.lock``. The kernel drops the lock
  when the holder dies, however it dies; the file only records who holds it, for the message.
- Object stores (fsspec URLs): a lease object ``_locks/<product>.json`` holding an owner token
  and an expiry, renewed by a heartbeat thread every ``LEASE_SECONDS / 3``. A killed holder's
  lease expires after ``LEASE_SECONDS``. On S3 (and MinIO) every lease write is conditional:
  created with ``If-None-Match: *``, taken over and renewed with ``If-Match: <ETag read>``, so of
  two writers racing for it exactly one wins, and a holder that was paused past its expiry finds
  out at its next renewal instead of overwriting the new holder's lease. Stores without
  conditional writes (``NOWCAST_LEASE_CONDITIONAL=0`` for S3-compatible servers that lack them)
  fall back to write, wait ``SETTLE_SECONDS``, read back, where two writers racing inside that
  window is the one case it cannot exclude. A holder whose lease was lost (taken over, or not
  renewed before it expired) raises ``LeaseLost`` before its next commit (``assert_held``).

The lock is re-entrant within a process (the ingest run holds it, each batch write takes it
again), never across processes.
"""

from __future__ import annotations

import errno
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
_leases: dict[tuple[str, str], _LeaseLock] = {}
_held_guard = threading.Lock()


class WriterBusy(RuntimeError):
    """Another process is writing to this product."""


class LeaseLost(WriterBusy):
    """This process no longer holds the product's lease (another writer took it over after it
    expired): nothing more may be committed under it."""


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
        assert_held(*key)
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
        if isinstance(lock, _LeaseLock):
            _leases[key] = lock
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
            _leases.pop(key, None)
        lock.release()


def assert_held(store: str, product: str) -> None:
    """Raise ``LeaseLost`` if this process's lease on ``product`` is gone; writers call it right
    before each commit. A no-op for local stores (``flock`` cannot be lost) and unlocked writes."""
    with _held_guard:
        lease = _leases.get((str(store), product))
    if lease is not None:
        lease.check()


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
        try:
            os.pwrite(fd, json.dumps(_me()).encode(), 0)
        except OSError as exc:  # a full disk: the flock excludes all the same (only "busy" messages lose
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # the holder's name), and recovery must run
                os.close(fd)
                raise
        self.fd = fd

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _conditional_writes(fs: Any) -> bool:
    """S3's conditional PUT (``If-None-Match``/``If-Match``, on AWS since 2024, and on MinIO)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "s3" in protocols and os.environ.get("NOWCAST_LEASE_CONDITIONAL", "1") != "0"


class _LeaseLock:
    def __init__(self, store: str, product: str, storage_options: dict | None):
        import fsspec

        from pipelines.store import fsspec_options

        self.store, self.product = store, product
        self.fs, _, paths = fsspec.get_fs_token_paths(store, storage_options=fsspec_options(storage_options))
        self.path = f"{paths[0].rstrip('/')}/{LOCK_GROUP}/{product}.json"
        self.token = uuid.uuid4().hex
        self.conditional = _conditional_writes(self.fs)
        self.etag: str | None = None  # the version of the lease object this holder last wrote
        self.expires = 0.0  # when the lease this holder last wrote runs out
        self.lost: str | None = None  # why the lease is no longer ours
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _read(self) -> tuple[dict | None, str | None]:
        """The lease and its ETag. The ETag is read first: if the object changes in between, the
        ETag is the stale one and a swap made with it fails, which is the safe side."""
        etag = None
        if self.conditional:
            try:
                etag = self.fs.info(self.path)["ETag"]
            except FileNotFoundError:
                return None, None
        try:
            return json.loads(self.fs.cat_file(self.path)), etag
        except FileNotFoundError:
            return None, None
        except ValueError:  # unreadable: replaceable, but only the version that was read
            return None, etag

    def _write(self, etag: str | None) -> bool:
        """Write our lease: over version ``etag``, or only where none exists (``etag`` None).
        False when the store refused because the object is not the version we read."""
        expires = time.time() + LEASE_SECONDS
        body = json.dumps(dict(_me(), owner=self.token, expires=expires)).encode()
        if not self.conditional:
            self.fs.pipe_file(self.path, body)
            self.expires = expires
            return True
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            response = self.fs.pipe_file(self.path, body, **condition)
        except FileExistsError:  # If-None-Match: another writer created it meanwhile
            return False
        except FileNotFoundError:  # If-Match: deleted meanwhile; otherwise a missing bucket, raised
            if etag:
                return False
            raise
        except OSError as error:  # s3fs: 412 PreconditionFailed as EINVAL; 409 ConditionalRequestConflict
            if error.errno == errno.EINVAL or "Conditional" in str(error) or "Precondition" in str(error):
                return False
            raise
        self.etag = response.get("ETag") if isinstance(response, dict) else self._read()[1]
        self.expires = expires
        return True

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current, etag = self._read()
            if current is None or current.get("expires", 0) < time.time() or current.get("owner") == self.token:
                if self._write(etag):
                    # read back even after a conditional write: a store that ignored the condition
                    # still gets the settle check
                    time.sleep(SETTLE_SECONDS)
                    current, _ = self._read()
                    if current is not None and current.get("owner") == self.token:
                        break
            if time.monotonic() >= deadline:
                raise _busy(self.store, self.product, current, timeout)
            time.sleep(POLL_SECONDS)
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name=f"lease-{self.product}")
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            if not self.renew_once():
                return

    def renew_once(self) -> bool:
        """Extend the lease; False (and ``lost`` set) once another writer holds it."""
        try:
            current, etag = self._read()
            if current is None or current.get("owner") != self.token:
                self.lost = f"it was taken over by {_holder_text(current)}" if current else "it was removed"
                return False
            if self._write(etag or self.etag):
                return True
            current, _ = self._read()  # refused: someone wrote it since our read
            self.lost = f"it was taken over by {_holder_text(current)}"
            return False
        except Exception:  # a missed renewal is retried; the expiry guards meanwhile (check)
            return True

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still ours and not past its expiry."""
        if self.lost is None and time.time() > self.expires:
            self.lost = f"it expired {time.time() - self.expires:.0f} s ago without a renewal"
        if self.lost is not None:
            raise LeaseLost(
                f"product '{self.product}' in {self.store}: this writer's lease is lost ({self.lost}); "
                "nothing more is committed under it. The store keeps its last commit: run the command again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.lost is not None:
            return
        current, etag = self._read()
        if current is None or current.get("owner") != self.token:
            return
        if self.conditional and etag:
            bucket, key, _ = self.fs.split_path(self.path)
            try:  # only the version we read: a lease taken over meanwhile stays
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            except OSError:
                pass
        else:
            self.fs.rm_file(self.path)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (this process included): a temporary file
    named with a live writer's pid is in use, a dead one's is a leftover to clean."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
