"""No frame lost under kills and concurrent writers (issue 9): real processes, real ``kill -9``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import hold_writer_lock, nowcast_cli, sample_files
from kill_during_write import killed_write

from pipelines.ingest import ingest
from pipelines.locking import WriterBusy, writer_lock
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

HELPER = Path(__file__).with_name("kill_during_write.py")
STORED = [0, 1, 2, 4, 6, 8, 10, 11]
LATE = [3, 5, 7, 9, 12, 13]  # older than the newest stored frame: merged through the journal
SIZE = 48


def _helper(store: str, kill_at: int, indices: list[int]) -> subprocess.CompletedProcess:
    """``HELPER``'s write in a process of its own, killed by itself at change ``kill_at``; forked from a
    server that imported the store code once (``killed_write``), since the dozens of runs here spent
    most of their time importing it in fresh interpreters."""
    code, output = killed_write(store, "p", kill_at, indices, SIZE)
    return subprocess.CompletedProcess([str(HELPER), store, "p", str(kill_at)], code,
                                       stdout=output if code == 0 else "", stderr="" if code == 0 else output)


def _assert_consistent(store: str, reference: dict[np.datetime64, np.ndarray], must_have: list) -> None:
    """Readable; sorted; every visible time holds that time's data; nothing stored is missing."""
    with ProductArchive(store, "p").open() as ds:
        times = ds["time"].values.astype("datetime64[s]")
        assert np.all(np.diff(times) > np.timedelta64(0)), times
        assert set(must_have) <= set(times.tolist())
        precip = ds["precip"].values
    for t, frame in zip(times.tolist(), precip, strict=True):
        np.testing.assert_array_equal(frame, reference[t], err_msg=f"data filed under {t} is not {t}'s")


def test_merge_survives_kill_9_at_every_stage(tmp_path: Path) -> None:
    """kill -9 at many durable changes of an out-of-order merge (every one in the journal's
    deletion), sometimes again during the next run's recovery; then a clean rerun must give
    exactly the store a kill-free ingest gives."""
    frames = synthetic_frames(n_frames=max(LATE) + 1, shape=(SIZE, SIZE))
    reference_store = str(tmp_path / "reference.zarr")
    ProductArchive(reference_store, "p").write(frames)
    with ProductArchive(reference_store, "p").open() as ds:
        reference = dict(zip(ds["time"].values.astype("datetime64[s]").tolist(), ds["precip"].values, strict=True))
    template = str(tmp_path / "template.zarr")
    ProductArchive(template, "p").write([frames[i] for i in STORED])
    before = [frames[i].time.astype("datetime64[s]").item() for i in STORED]

    probe = str(tmp_path / "probe.zarr")
    shutil.copytree(template, probe)
    total = int(_helper(probe, 0, LATE).stdout)
    assert total > 40
    # the journal's deletion is the write's last changes: take every one there, every 8th before
    points = sorted({*range(1, total - 13, 8), *range(max(1, total - 13), total + 1)})

    def kill_at(point: int) -> str | None:
        store = str(tmp_path / f"kill{point}.zarr")
        shutil.copytree(template, store)
        killed = _helper(store, point, LATE)
        if killed.returncode != -signal.SIGKILL:
            return f"point {point}: not killed ({killed.returncode}): {killed.stderr[-500:]}"
        _assert_consistent(store, reference, before)
        if point % 3 == 0:  # and killed again, early in the rerun that recovers
            _helper(store, 3, LATE)
            _assert_consistent(store, reference, before)
        ProductArchive(store, "p").write([frames[i] for i in LATE])  # the rerun
        _assert_consistent(store, reference, list(reference))
        shutil.rmtree(store)
        return None

    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(kill_at, points) if f]
    assert not failures, failures


def test_merged_frame_is_stored_exactly_as_an_appended_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = synthetic_frames(n_frames=6, shape=(64, 64))
    for frame in frames:  # values on the rounding edge of the stored hundredths, e.g. 13.545
        frame.rain_rate[:] = np.round(rng.random((64, 64)) * 2000) / 100 + 0.005
    appended, merged = ProductArchive(str(tmp_path / "a.zarr"), "p"), ProductArchive(str(tmp_path / "m.zarr"), "p")
    appended.write(frames)
    merged.write(frames[3:])
    assert merged.write(frames[:3]).inserted_out_of_order == 3
    np.testing.assert_array_equal(appended.open()["precip"].values, merged.open()["precip"].values)


def _ingest_cmd(store: str, folder: str, *extra: str) -> list[str]:
    exe = str(Path(sys.executable).with_name("nowcast"))
    return [exe, "ingest", "--format", "fmi_pgm", "--store", store, "--product", "fmi", *extra, folder]


def test_two_concurrent_ingests_serialise(tmp_path: Path) -> None:
    """Two `nowcast ingest` runs into one product at once, on disjoint halves interleaved in
    time (so the second merges into the first's frames): the store ends as one clean ingest's."""
    files = sample_files("fmi", 12)
    halves = [tmp_path / "even", tmp_path / "odd"]
    for i, path in enumerate(files):
        target = halves[i % 2] / path.name
        target.parent.mkdir(exist_ok=True)
        target.symlink_to(path)
    store = str(tmp_path / "archive.zarr")
    procs = [subprocess.Popen(_ingest_cmd(store, str(h), "--batch-size", "2"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for h in halves]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reference = str(tmp_path / "reference.zarr")
    ingest(files, reference, "fmi", fmt="fmi_pgm")
    got, want = ProductArchive(store, "fmi").open().load(), ProductArchive(reference, "fmi").open().load()
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_array_equal(got["precip"].values, want["precip"].values)


def test_second_writer_gets_a_clear_message_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    store = str(tmp_path / "archive.zarr")
    holder = hold_writer_lock(store, "fmi")
    try:
        files = sample_files("fmi", 2)
        busy = nowcast_cli(*_ingest_cmd(store, str(files[0]), "--lock-timeout", "0")[1:])
        assert busy.returncode == 75, busy.stdout + busy.stderr
        message = " ".join((busy.stdout + busy.stderr).split())
        assert f"pid {holder.pid}" in message and "one writer per product" in message
        assert len(message) < 400
        with pytest.raises(WriterBusy), writer_lock(store, "fmi", timeout=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the next writer goes straight in
    with writer_lock(store, "fmi", timeout=0):
        pass
    done = nowcast_cli(*_ingest_cmd(store, str(sample_files("fmi", 2)[0]), "--lock-timeout", "0")[1:])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["ingest", "backfill"])
def test_workers_die_with_their_killed_parent(tmp_path: Path, fmi_archive: str, command: str) -> None:
    folder = str(sample_files("fmi")[0].parent)
    exe = str(Path(sys.executable).with_name("nowcast"))
    cmd = _ingest_cmd(str(tmp_path / "a.zarr"), folder, "--workers", "2") if command == "ingest" else [
        exe, "backfill", "--model", "optical_flow", "--store", fmi_archive, "--product", "fmi",
        "--start", "2016-09-28T15:00:00Z", "--end", "2016-09-28T16:40:00Z", "--lead-steps", "6",
        "--workers", "2", "--batch", "1", "--out", str(tmp_path / "forecasts.zarr")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers: list[psutil.Process] = []
    while len(workers) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
        workers = [c for c in parent.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
        time.sleep(0.1)
    time.sleep(1.0)  # past the pool initialiser that arms the death signal
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [w.pid for w in alive]


def test_object_store_lease_excludes_a_second_writer_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease used on object stores (here fsspec's memory://, one process standing in for two)."""
    from pipelines import locking

    monkeypatch.setattr(locking, "SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(locking, "LEASE_SECONDS", 1.5)
    store = "memory://lease-test/archive.zarr"
    first, second = locking._LeaseLock(store, "p", None), locking._LeaseLock(store, "p", None)
    first.acquire(timeout=0)
    with pytest.raises(WriterBusy, match=f"pid {os.getpid()}"):
        second.acquire(timeout=0.3)
    time.sleep(2.0)  # the heartbeat keeps a live holder's lease fresh past its expiry
    with pytest.raises(WriterBusy):
        second.acquire(timeout=0)
    first._stop.set()  # the holder "dies": no more renewals
    first._heartbeat.join()
    second.acquire(timeout=3.0)  # the lease expires, the second writer takes it
    with pytest.raises(locking.LeaseLost, match="expired .* without a renewal"):
        first.check()  # what a commit of the stalled holder would meet
    second.check()
    second.release()
    first.release()  # releasing a lease one no longer owns leaves the other's alone


def _first_write(args: tuple[str, str, object]) -> str | None:
    """One process's first write of its own product into a store others are creating too."""
    store, product, barrier = args
    barrier.wait()  # type: ignore[attr-defined]
    try:
        ProductArchive(store, product).write(synthetic_frames(n_frames=2, shape=(16, 16)))
    except Exception as error:  # reported, so the assertion shows what broke
        return f"{product}: {error!r}"
    return None


def test_writers_of_different_products_can_create_a_fresh_store_together(tmp_path: Path) -> None:
    """Processes released at once by a barrier, each writing its own product into one new store:
    creating the root, the lock and the product groups races, and every writer must still land."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = 6
    # one pool of six for the four trials (six fresh interpreters per trial were most of the test's
    # time): each trial's six writes still run in six processes at once, since a write holds its
    # process at the barrier until all six have arrived
    with context.Manager() as manager, context.Pool(writers) as pool:
        for trial in range(4):
            store = str(tmp_path / f"fresh{trial}.zarr")
            barrier = manager.Barrier(writers)
            tasks = [(store, f"p{i}", barrier) for i in range(writers)]
            failures = [f for f in pool.map(_first_write, tasks, chunksize=1) if f]
            assert not failures, failures
            for i in range(writers):
                assert ProductArchive(store, f"p{i}").open().sizes["time"] == 2


def test_stored_hundredths_read_back_as_the_same_float32_rain(tmp_path: Path) -> None:
    """1.00 mm/h must read back as 1.0, not 0.99999998: verification counts rain at >= 1 mm/h."""
    frames = synthetic_frames(n_frames=2, shape=(16, 16))
    values = np.round(np.arange(256, dtype=np.float32).reshape(16, 16) * np.float32(0.37), 2).astype(np.float32)
    for frame in frames:
        frame.rain_rate[:] = values
    frames[1].rain_rate[0, :4] = np.nan
    archive = ProductArchive(str(tmp_path / "a.zarr"), "p")
    archive.write(frames)
    with archive.open() as ds:
        read = ds["precip"].values
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read[0], values)  # every hundredth, 1.00 among them, exactly as written
    assert np.isnan(read[1, 0, :4]).all() and (read[1, 0, 4:] == values[0, 4:]).all()
    assert (read[0] >= 1.0).sum() == (values >= 1.0).sum()
