"""Worker pools whose processes die with their parent, however the parent dies.

Why: after ``kill -9`` of ``nowcast ingest`` or ``nowcast backfill`` the pool's workers (hundreds
of MB each) would live on, and backfill's would keep computing and writing. On Linux each
worker asks the kernel for SIGKILL when its parent goes (``PR_SET_PDEATHSIG``), and checks the
parent is still the one that started it (it may have died before the request).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGKILL this worker when ``parent_pid`` exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context process pool (the parent holds zarr's I/O threads, which fork does not
    copy safely) whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
