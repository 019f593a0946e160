"""The archive on a real S3-compatible server on loopback (issue 14): ingest, crashes, the
single-writer rule, serving, backfill and clear errors, through the same settings as
docker-compose.yml (AWS_* credentials and FSSPEC_S3_ENDPOINT_URL in the environment)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from conftest import S3Server, cropped_fmi, hold_writer_lock, kill_9_when, nowcast_cli, sample_files
from test_archive_integrity import HELPER, LATE, SIZE, STORED, _assert_consistent, _helper

from pipelines.ingest import ingest
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

NOWCAST = str(Path(sys.executable).with_name("nowcast"))


def committed(store: str, product: str) -> int:
    archive = ProductArchive(store, product)
    try:
        return archive.times().size if archive.exists() else 0
    except Exception:
        return 0


def assert_same_archive(store: str, reference: str, product: str) -> None:
    got, want = ProductArchive(store, product).open().load(), ProductArchive(reference, product).open().load()
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_array_equal(got["precip"].values, want["precip"].values)


def service_log(tmp: Path) -> str:
    """The tail of the test service's log, for a failure message (warnings and errors only)."""
    lines = "".join(p.read_text() for p in sorted(tmp.glob("service-*.log"))).splitlines()
    return "\n".join(line for line in lines if "HTTP/1.1" not in line)[-3000:]


def skill_when(url: str, tmp: Path, done: Callable[[list[dict]], bool], timeout: float = 60) -> dict:
    """Poll ``/v1/skill`` for fmi until ``done(models)``; on timeout, fail with the service's log."""
    deadline = time.monotonic() + timeout
    while not done((skill := httpx.get(f"{url}/v1/skill", params={"product": "fmi"}, timeout=30).json())["models"]):
        assert time.monotonic() < deadline, (skill, service_log(tmp))
        time.sleep(0.5)
    return skill


def test_ingest_into_s3_survives_kill_9_mid_append(s3_store: str, tmp_path: Path) -> None:
    files = sample_files("fmi", 8)  # batches of two: killed once two are committed, with two still to come
    folder = str(files[0].parent)
    cmd = [NOWCAST, "ingest", "--format", "fmi_pgm", "--store", s3_store, "--product", "fmi", "--batch-size", "2"]
    proc = subprocess.Popen([*cmd, *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_9_when(proc, lambda: committed(s3_store, "fmi") >= 4, "ingest")
    assert 4 <= committed(s3_store, "fmi") < len(files)
    rerun = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    reference = str(tmp_path / "reference.zarr")
    ingest(files, reference, "fmi", fmt="fmi_pgm")
    assert_same_archive(s3_store, reference, "fmi")
    assert folder  # the files came from the real sample folder


def test_the_changes_a_kill_test_counts_do_not_depend_on_how_fast_the_write_runs(
        s3_server: S3Server, tmp_path: Path) -> None:
    """The kill tests number a write's changes in one run and kill another run at change N: the two
    must count alike. A lease renewal is a timed heartbeat, so a slow run makes more of them: they
    are not counted (``kill_during_write._renews_a_lease``; a loaded CI pass once killed no run at
    the commit because the counting run had renewed once more). Here a 3 s lease renews (every 1 s)
    during the write (about 3 s here), and the count equals the one a 60 s lease gives, where none
    does. (Not shorter: under load a heartbeat late by more than the lease loses it.)"""
    frames = synthetic_frames(n_frames=max(LATE) + 1, shape=(SIZE, SIZE))
    counts = {}
    renewals = {}
    for lease in ("3", "60"):
        store = s3_server.bucket(f"lease-{lease}") + "/archive.zarr"
        ProductArchive(store, "p").write([frames[i] for i in STORED])
        run = subprocess.run([sys.executable, str(HELPER), store, "p", "0", ",".join(map(str, LATE)), str(SIZE)],
                             capture_output=True, text=True, env={**os.environ, "NOWCAST_LEASE_SECONDS": lease})
        assert run.returncode == 0, run.stderr[-2000:]
        counts[lease] = int(run.stdout)
        renewals[lease] = int(run.stderr.split("lease renewals: ")[-1].split()[0])
    assert renewals["3"] >= 1 and renewals["60"] == 0, renewals  # the short lease did renew during the write
    assert counts["3"] == counts["60"] > 20, counts


def test_merge_on_s3_survives_kill_9_at_many_points(s3_server: S3Server, tmp_path: Path) -> None:
    import fsspec

    frames = synthetic_frames(n_frames=max(LATE) + 1, shape=(SIZE, SIZE))
    reference_store = str(tmp_path / "reference.zarr")
    ProductArchive(reference_store, "p").write(frames)
    with ProductArchive(reference_store, "p").open() as ds:
        reference = dict(zip(ds["time"].values.astype("datetime64[s]").tolist(), ds["precip"].values, strict=True))
    before = [frames[i].time.astype("datetime64[s]").item() for i in STORED]

    def run(store: str, kill_at: int, indices: list[int]) -> subprocess.CompletedProcess:
        return _helper(store, kill_at, indices)  # a process of its own, forked from a forkserver

    # the stored frames written once, through the store code; each kill point starts from a server-side
    # copy of that archive (every object, byte for byte), not from a write of its own
    template = s3_server.bucket("merge-template") + "/archive.zarr"
    ProductArchive(template, "p").write([frames[i] for i in STORED])
    s3 = fsspec.filesystem("s3", skip_instance_cache=True)
    objects = sorted(p.removeprefix(template[5:]) for p in s3.find(template[5:]))

    def copy_of_template(name: str) -> str:
        store = s3_server.bucket(name) + "/archive.zarr"
        s3.copy(template[5:], store[5:], recursive=True)
        assert sorted(p.removeprefix(store[5:]) for p in s3.find(store[5:])) == objects, name
        return store

    probe = copy_of_template("merge-probe")
    _assert_consistent(probe, reference, before)  # the copy reads as the archive that was written
    total = int(run(probe, 0, LATE).stdout)
    assert total > 20
    points = sorted({*range(1, total - 4, max(1, total // 2)), total - 1, total})  # start, middle, the commit

    def kill_at(point: int) -> str | None:
        store = copy_of_template(f"merge-kill-{point}")
        killed = run(store, point, LATE)
        if killed.returncode != -signal.SIGKILL:
            return f"point {point}: not killed ({killed.returncode}) {killed.stderr[-300:]}"
        _assert_consistent(store, reference, before)
        rerun = run(store, 0, LATE)
        if rerun.returncode != 0:
            return f"point {point}: rerun failed {rerun.stderr[-300:]}"
        _assert_consistent(store, reference, list(reference))
        return None

    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(kill_at, points) if f]
    assert not failures, failures


def test_one_writer_per_product_on_s3(s3_store: str, tmp_path: Path) -> None:
    files = sample_files("fmi", 6)  # three each below: two batches apiece, the second writer's merged in
    holder = hold_writer_lock(s3_store, "fmi")
    try:
        busy = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", s3_store, "--product", "fmi",
                           "--lock-timeout", "0", str(files[0]))
        assert busy.returncode == 75, busy.stdout + busy.stderr
        assert f"pid {holder.pid}" in " ".join((busy.stdout + busy.stderr).split())
    finally:
        holder.kill()
        holder.wait()
    # two writers at once, disjoint halves interleaved in time: serialised, nothing lost.
    # (the killed holder's lease expires after NOWCAST_LEASE_SECONDS: they wait for it)
    halves = [files[0::2], files[1::2]]
    procs = [subprocess.Popen([NOWCAST, "ingest", "--format", "fmi_pgm", "--store", s3_store, "--product", "fmi",
                               "--batch-size", "2", "--lock-timeout", "120", *map(str, half)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for half in halves]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reference = str(tmp_path / "reference.zarr")
    ingest(files, reference, "fmi", fmt="fmi_pgm")
    assert_same_archive(s3_store, reference, "fmi")


def _race_for_lease(args: tuple[str, object, float]) -> bool:
    """One of several writer processes that have all read "no lease" (they wait for each other at
    the barrier after that read) and then write theirs one after another, each ``stall`` seconds
    late: a stall between read and write longer than the settle wait, the case a lease taken by
    write-then-read-back cannot exclude. Only the store's conditional write keeps them apart."""
    from pipelines import locking

    store, barrier, stall = args
    locking.SETTLE_SECONDS = 0.1
    lease = locking._LeaseLock(store, "p", None)
    read, stalled = lease._read, False

    def read_then_stall() -> tuple[dict | None, str | None]:
        nonlocal stalled
        seen = read()
        if not stalled:  # only the first read, the one acquire decides on
            stalled = True
            barrier.wait()  # type: ignore[attr-defined]
            time.sleep(stall)
        return seen

    lease._read = read_then_stall  # type: ignore[method-assign]
    try:
        lease.acquire(timeout=0)
    except locking.WriterBusy:
        return False
    time.sleep(4.0)  # held while the others are still trying
    lease.release()
    return True


def test_racing_writers_get_the_s3_lease_exactly_once(s3_store: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(5)
        with context.Pool(5) as pool:
            won = pool.map(_race_for_lease, [(s3_store, barrier, 0.4 * k) for k in range(5)])
    assert won == [True, False, False, False, False]


PAUSED_WRITER = """
import sys, time
from pipelines import locking
from pipelines.locking import LeaseLost
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames
archive = ProductArchive(sys.argv[1], "p")
with archive.writer_lock():
    print("held", flush=True)
    sys.stdin.readline()  # paused here (SIGSTOP) past its lease, then woken (SIGCONT) and told to go on
    # the woken heartbeat's renewal: it finds the new holder's lease and gives up (a bounded wait,
    # not a verdict: a heartbeat that overwrote the lease instead leaves lost unset, and the test fails)
    heartbeat = next(iter(locking._leases.values()))  # the one lease this process holds
    deadline = time.monotonic() + 60
    while heartbeat.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    print("renewal tried", flush=True)
    sys.stdin.readline()  # told to write
    try:
        archive.write(synthetic_frames(n_frames=3, shape=(16, 16)))
    except LeaseLost as lost:
        print(lost, flush=True)
        sys.exit(75)
"""


def test_a_writer_paused_past_its_s3_lease_neither_steals_it_back_nor_commits(s3_server: S3Server,
                                                                             s3_store: str, monkeypatch) -> None:
    """The case a plain lease gets wrong: a holder stalls (here SIGSTOP) past its expiry, another
    writer takes the product over, the first wakes up. Its heartbeat must not overwrite the new
    holder's lease, and its write must stop before the commit."""
    import fsspec

    # both writer processes on a 2 s lease (heartbeat every 2/3 s): the pause below outlasts it all the same
    lease_seconds = 2.0
    monkeypatch.setenv("NOWCAST_LEASE_SECONDS", str(lease_seconds))
    ProductArchive(s3_store, "p").write(synthetic_frames(n_frames=2, shape=(16, 16)))
    paused = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, s3_store], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    holder = None
    try:
        assert paused.stdout.readline().strip() == "held"
        os.kill(paused.pid, signal.SIGSTOP)
        time.sleep(lease_seconds + 1.0)
        holder = hold_writer_lock(s3_store, "p")  # the lease expired: a second writer takes it
        os.kill(paused.pid, signal.SIGCONT)
        paused.stdin.write("go on\n")
        paused.stdin.flush()
        # the woken heartbeat has tried to renew (and found the lease taken) before the lease is read
        assert paused.stdout.readline().strip() == "renewal tried"
        lease = fsspec.filesystem("s3", skip_instance_cache=True).cat_file(f"{s3_store}/_locks/p.json")
        assert f'"pid": {holder.pid}' in lease.decode(), lease
        output = paused.communicate("write\n", timeout=60)[0]
        assert paused.returncode == 75, output
        assert "lease is lost" in output and "taken over by pid" in output and "Traceback" not in output, output
    finally:
        for proc in (paused, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert ProductArchive(s3_store, "p").times().size == 2  # the stalled writer committed nothing


def test_a_missing_bucket_or_credentials_is_one_clear_message(s3_server: S3Server) -> None:
    file = str(sample_files("fmi", 1)[0])
    missing = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", "s3://no-such-bucket/archive.zarr",
                          "--product", "fmi", file)
    output = missing.stdout + missing.stderr
    assert missing.returncode == 2, output[-2000:]
    assert "no-such-bucket" in output and "Traceback" not in output and len(output) < 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent")
    store = s3_server.bucket("no-credentials") + "/archive.zarr"
    anonymous = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", store, "--product", "fmi", file, env=env)
    output = anonymous.stdout + anonymous.stderr
    assert anonymous.returncode == 2, output[-2000:]
    assert "credentials" in output.lower() and "Traceback" not in output and len(output) < 1000


def test_serving_from_s3_and_readiness_follows_the_store(s3_server: S3Server, s3_store: str, tmp_path: Path) -> None:
    from test_service import start_server

    # real FMI frames on a 320 x 320 window (``cropped_fmi``): every forecast here is optical flow, whose
    # cost grows with the grid and whose full-grid reads and writes to the bucket showed nothing more
    cropped_fmi(s3_store, 6)
    for url in start_server(tmp_path, {"store": s3_store, "models": ["persistence", "optical_flow"],
                                       "max_grid_pixels": 1300 * 800, "verification_interval_s": 0.5}):
        answer = httpx.post(f"{url}/v1/forecast", json={"model": "optical_flow", "lead_steps": 2, "product": "fmi",
                                                          "time": "2016-09-28T15:10:00Z"}, timeout=120)
        assert answer.status_code == 200, answer.text[:500]
        assert answer.json()["init_time"] == "2016-09-28T15:10:00Z"
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        s3_server.stop()
        try:
            down = httpx.get(f"{url}/readyz", timeout=60)
            assert down.status_code == 503 and down.json()["store_reachable"] is False, down.text[:500]
        finally:
            s3_server.start()
        back = httpx.get(f"{url}/readyz", timeout=60)
        assert back.status_code == 200, back.text[:500]
        # a forecast kept in the bucket (asked again: the first may have met the store down); its two
        # leads arrive, and it is verified there
        again = httpx.post(f"{url}/v1/forecast", json={"model": "optical_flow", "lead_steps": 2, "product": "fmi",
                                                         "time": "2016-09-28T15:10:00Z"}, timeout=120)
        assert again.status_code == 200, again.text[:500]
        cropped_fmi(s3_store, 8)  # frames 7 and 8 arrive (the first six are there already)
        skill = skill_when(url, tmp_path, lambda models: len(models) > 0)
        assert [(m["model"], m["n_cases"], len(m["scores"])) for m in skill["models"]] == [("optical_flow", 1, 2)]
        # a second forecast, kept and scored after the service has listed the ledger: listings are
        # never served from a cache that other threads' and processes' writes do not reach
        earlier = httpx.post(f"{url}/v1/forecast", json={"model": "optical_flow", "lead_steps": 2, "product": "fmi",
                                                           "time": "2016-09-28T15:05:00Z"}, timeout=120)
        assert earlier.status_code == 200, earlier.text[:500]
        skill_when(url, tmp_path, lambda models: models[0]["n_cases"] == 2)


def test_backfill_to_s3_resumes_after_a_kill(fmi_crop_archive: str, s3_server: S3Server) -> None:
    out = s3_server.bucket("backfill-out") + "/forecasts.zarr"
    # the real event on a 320 x 320 window (optical flow of the full grid is slow), 8 init times: an
    # init takes a fraction of a second there, so six are left to do when the kill lands after two
    cmd = [NOWCAST, "backfill", "--store", fmi_crop_archive, "--product", "fmi", "--model", "optical_flow",
           "--start", "2016-09-28T15:00:00Z", "--end", "2016-09-28T15:35:00Z", "--lead-steps", "3",
           "--workers", "1", "--batch", "1", "--out", out, "--no-verify"]  # the kill, not verification, is tested
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from nowcast.backfill import open_forecasts

    def done() -> int:
        try:
            with open_forecasts(out) as ds:
                return int(ds["done"].values.sum())
        except Exception:
            return 0

    kill_9_when(proc, lambda: done() >= 2, "backfill", timeout=300)
    partial = done()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    with open_forecasts(out) as ds:
        assert bool(ds["done"].values.all()) and int(ds["done"].values.sum()) > partial
        assert np.isfinite(ds["precip"].values).any()


def test_training_reads_its_windows_from_s3(s3_store: str, tmp_path: Path) -> None:
    import torch
    from test_training import train_command, write_overrides

    ProductArchive(s3_store, "synth").write(synthetic_frames(n_frames=36, shape=(64, 64), seed=2))
    overrides = write_overrides(tmp_path, s3_store, epochs=1)
    # a few batches of windows read from the bucket are the point, not a whole epoch of them
    few = ("--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2")
    result = subprocess.run(train_command(overrides, *few), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert info["nowcast"]["data"]["products"] == ["synth"] and info["global_step"] > 0


def test_loader_workers_forked_after_the_parent_read_s3_get_their_own_client(s3_store: str) -> None:
    """A forked DataLoader worker must not reuse the parent's S3 session (bound to its loop)."""
    from torch.utils.data import DataLoader

    from pipelines.dataset import SequenceDataset

    ProductArchive(s3_store, "synth").write(synthetic_frames(n_frames=12, shape=(32, 32), seed=1))
    dataset = SequenceDataset(s3_store, "synth", 3, 2, crop=16)
    first = dataset[0]["inputs"]  # the parent opens its handles first
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert sum(b["inputs"].shape[0] for b in batches) == len(dataset)
    assert first.shape == batches[0]["inputs"][0].shape


def test_a_wrong_credential_is_one_clear_message(tmp_path: Path) -> None:
    """Against an S3 server that checks credentials (moto with authentication on)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong",
               "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        denied = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", "s3://nowcast/archive.zarr", "--product",
                             "fmi", str(sample_files("fmi", 1)[0]), env=env)
    finally:
        server.terminate()
        server.wait()
    output = denied.stdout + denied.stderr
    assert denied.returncode == 2, output[-2000:]
    assert "access denied: check the credentials" in output and "Traceback" not in output and len(output) < 1000
