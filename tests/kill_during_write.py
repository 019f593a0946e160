"""Test helper: write frames into a product and ``kill -9`` this very process at the N-th
durable change to the store (an atomic rename, a file deletion or a directory removal).

    python tests/kill_during_write.py STORE PRODUCT N INDICES [SHAPE]

(a local path, or an s3:// URL: then the changes counted are S3 PUTs, DELETEs and copies)
writes the synthetic frames (``pipelines.synthetic``) at the comma-separated INDICES and, when it gets to the end
without being killed, prints how many durable changes the write made. ``killed_write`` does the
same in a process forked from a forkserver, for tests that run it dozens of times.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

#: held while a ``killed_write`` child starts or is reaped (see there)
_POLLING = threading.Lock()

#: S3 calls that change the bucket
S3_WRITES = {"put_object", "delete_object", "delete_objects", "copy_object", "complete_multipart_upload"}


def _renews_a_lease(method: str, kwargs: dict) -> bool:
    """A lease renewal (``pipelines.locking``: a conditional PUT over the lease object's version),
    which the heartbeat thread makes on a timer, not as a step of the write: how many a write makes
    depends on how fast the machine is, so counting them would move every later change's number
    between the run that counts and the run that is killed."""
    return method == "put_object" and "IfMatch" in kwargs and "/_locks/" in f"/{kwargs.get('Key', '')}"


def arm_s3(kill_at: int) -> list[int]:
    """Count every S3 call that changes the bucket, lease renewals aside (``_renews_a_lease``; they
    are counted apart, in the list's second item); SIGKILL ourselves just before call ``kill_at``."""
    import s3fs

    count = [0, 0]
    original = s3fs.S3FileSystem._call_s3

    async def call(self, method, *args, **kwargs):
        if method in S3_WRITES and _renews_a_lease(method, kwargs):
            count[1] += 1
        elif method in S3_WRITES:
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = call
    return count


def arm(kill_at: int) -> list[int]:
    """Count every rename, unlink and rmdir; SIGKILL ourselves just before change ``kill_at``."""
    count = [0]

    def counted(original):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return call

    for name in ("replace", "rename", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
    return count


def _write_in_child(store: str, product: str, kill_at: int, indices: list[int], size: int, report: str,
                    env: dict[str, str]) -> None:
    """What ``__main__`` does, in a process forked from the forkserver of ``killed_write``: the
    change count (or what went wrong) goes to the file ``report``. ``env`` is the environment the
    script would have started with (the server's is the one it had when it started)."""
    import multiprocessing
    import traceback

    import fsspec.config

    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_S3_ENDPOINT_URL, as a new process reads it

    # what the script's fresh interpreter has: the default start method (a forkserver child inherits
    # "forkserver", and numcodecs' lazily made lock would then be left to the resource tracker)
    multiprocessing.set_start_method("fork", force=True)
    try:
        everything = synthetic_frames(n_frames=max(indices) + 1, shape=(size, size))
        frames = [everything[i] for i in indices]
        changes = (arm_s3 if store.startswith("s3://") else arm)(kill_at)
        ProductArchive(store, product).write(frames)
    except BaseException:
        with open(report, "w") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1) from None
    with open(report, "w") as f:
        f.write(str(changes[0]))


def killed_write(store: str, product: str, kill_at: int, indices: list[int], size: int = 48,
                 env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python kill_during_write.py STORE PRODUCT N INDICES SIZE`` as a process forked from a
    forkserver that has imported the store code once (a fresh interpreter's imports were most of each
    run's time): the same write in a process of its own, ``kill -9``-ed by itself at change N.
    ``env`` (default: this process's environment) is set in the child, e.g. an object store's endpoint.
    Returns its exit code (``-SIGKILL`` when killed) and its output (the change count, or the error)."""
    import multiprocessing
    import tempfile
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("forkserver")
    # imported once, in the server, before its first fork (not this module: the server does not get
    # the tests folder on its path)
    context.set_forkserver_preload(["pipelines.store", "pipelines.synthetic", "s3fs"])
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report")
        child = context.Process(target=_write_in_child, args=(store, product, kill_at, indices, size, report,
                                                                   dict(os.environ if env is None else env)))
        # Process.start() polls the other running children, and a forkserver child's exit code is read
        # once from a pipe: two threads (tests run several writes at once) must not read one twice
        with _POLLING:
            child.start()
        wait([child.sentinel])
        with _POLLING:
            child.join()
        output = open(report).read() if os.path.exists(report) else ""
    return child.exitcode, output


if __name__ == "__main__":
    store, product, kill_at, indices = sys.argv[1:5]
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 48
    wanted = [int(i) for i in indices.split(",")]
    everything = synthetic_frames(n_frames=max(wanted) + 1, shape=(size, size))
    frames = [everything[i] for i in wanted]
    # armed before the write's own recovery: a kill can land in that too
    changes = (arm_s3 if store.startswith("s3://") else arm)(int(kill_at))
    ProductArchive(store, product).write(frames)
    print(changes[0])
    if len(changes) > 1:
        print(f"lease renewals: {changes[1]}", file=sys.stderr)
