"""Shared fixtures: the real sample data in ../shared/data, and small stores built from it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines.sample_data import SAMPLE_EVENTS, sample_event_files

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SAMPLE_DATA", REPO.parent / "shared" / "data"))

#: name -> (folder, format, files used in tests)
PRODUCTS = SAMPLE_EVENTS


def sample_files(product: str, count: int | None = None) -> list[Path]:
    """Real files of one sample product; a missing data folder fails the test, loudly."""
    try:
        return sample_event_files(product, count, DATA)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


def nowcast_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``nowcast`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("nowcast")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=check, **kwargs)


def nowcast_in_process(*args: str, env: dict[str, str | None] | None = None) -> SimpleNamespace:
    """``nowcast ARGS`` run by the same Typer app in this process, with the exit code, stdout and stderr
    (an uncaught exception's traceback included) a subprocess gives: for a further call of a command the
    test already runs as a real process, sparing an interpreter and torch start-up, not a line of its code."""
    import traceback

    from typer.testing import CliRunner

    from nowcast_cli.main import app

    result = CliRunner(env=env).invoke(app, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr)


#: what dask's LocalCluster writes into this process's environment for its workers
THREAD_LIMITS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than the cores. A third of the suite's wall time is tests waiting
    (for the processes they kill, the servers and the browser they talk to: the suite's CPU time over
    its tests' wall time is 0.6, measured in docs/performance.md), so a spare worker fills a core
    another leaves idle; on 2 cores 3 workers took the idle suite from 12 min 38 s to 11 min 05 s.
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides when it is set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return len(os.sched_getaffinity(0)) + 1


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``, on by default in pyproject.toml) each worker gets its share of the
    cores, for torch here and for every ``nowcast`` subprocess it starts: N workers each spawning
    torch on every core would oversubscribe the machine and make the suite slower, not faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    share = str(max(1, (os.cpu_count() or 1) // workers))
    for name in THREAD_LIMITS[:3]:
        os.environ[name] = share
    import torch

    torch.set_num_threads(int(share))


@pytest.fixture(autouse=True)
def _thread_limits_restored() -> Iterator[None]:
    """Undo a test's LocalCluster setting OMP_NUM_THREADS=1 here: every later ``nowcast``
    subprocess would run torch on one thread, and the suite take minutes longer."""
    saved = {name: os.environ.get(name) for name in THREAD_LIMITS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "archive.zarr")


def synthetic_training_config(tmp: Path) -> Path:
    """A synthetic archive and a YAML override that trains a tiny ConvLSTM (4 in, 3 out) on it in seconds."""
    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    store = str(tmp / "synth.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=36, shape=(64, 64)))
    overrides = {
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp)}},
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True}}]},
        "model": {"model_kwargs": {"hidden": [8], "patch": 2}},
        "data": {"store": store, "products": ["synth"], "t_in": 4, "t_out": 3, "crop": 32, "min_rain_fraction": 0.0,
                 "batch_size": 2, "num_workers": 0, "block_hours": 1, "split_pattern": ["train", "val"]},
    }
    path = tmp / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def train_command(*configs: Path, extra: tuple[str, ...] = ()) -> list[str]:
    exe = str(Path(sys.executable).with_name("nowcast"))
    args = [exe, "train", "--config", str(REPO / "configs" / "convlstm.yaml")]
    for config in configs:
        args += ["--config", str(config)]
    return args + list(extra)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ConvLSTM (4 in, 3 out, patch 2, 5-min steps) trained for one epoch on synthetic storms."""
    tmp = tmp_path_factory.mktemp("ckpt")
    subprocess.run(train_command(synthetic_training_config(tmp)), check=True, capture_output=True, cwd=tmp)
    return tmp / "ckpt" / "last.ckpt"


@pytest.fixture(scope="session")
def fmi_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """24 real FMI frames (14:45 .. 16:40 UTC, 28 Sep 2016), shared read-only by several modules."""
    from pipelines.ingest import ingest

    store = str(tmp_path_factory.mktemp("fmi") / "fmi.zarr")
    # one process: decoding in a worker pool is tested where it is the point (test_ingest, test_cli,
    # test_archive_integrity); spawning one here only cost seconds, in every xdist worker
    ingest(sample_files("fmi", 24), store, "fmi", fmt="fmi_pgm", workers=1)
    return store


#: a 320 x 320 window of the FMI composite (rows, cols) with rain (~16 % above 1 mm/h) and the radar's
#: edge (~13 % nodata) in it, across a chunk boundary (256): real radar at a ninth of the full grid
FMI_RAIN_EDGE = (slice(256, 576), slice(160, 480))


def cropped_fmi(store: str, count: int, box: tuple[slice, slice] = FMI_RAIN_EDGE) -> str:
    """The first ``count`` real FMI frames, decoded as ``ingest`` decodes them, cut to ``box`` and
    written as product ``fmi`` of ``store``: for tests whose per-frame work (optical flow, S-PROG)
    grows with the grid, not with anything the full 1226 x 760 grid adds."""
    from dataclasses import replace

    from pipelines.grid import Grid
    from pipelines.ingest import decode
    from pipelines.store import ProductArchive

    rows, cols = box
    frames = []
    for path in sample_files("fmi", count):
        frame = decode(path, "fmi_pgm")
        grid = Grid(frame.grid.crs_proj, frame.grid.x[cols], frame.grid.y[rows])
        frames.append(replace(frame, rain_rate=frame.rain_rate[rows, cols], grid=grid))
    ProductArchive(store, "fmi").write(frames)
    return store


@pytest.fixture(scope="session")
def fmi_crop_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``fmi_archive``'s 24 real frames on the ``FMI_RAIN_EDGE`` window, for tests that run optical
    flow for many init times (backfill): the same event and times at a ninth of the pixels."""
    return cropped_fmi(str(tmp_path_factory.mktemp("fmi-crop") / "fmi.zarr"), 24)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nowcast-service-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def archive(workdir: Path) -> str:
    store = str(workdir / "archive.zarr")
    from pipelines.ingest import ingest

    ingest(sample_files("fmi", 10), store, "fmi", fmt="fmi_pgm")
    files = sample_files("fmi", 16)
    ingest(files[12:], store, "fmi", fmt="fmi_pgm")  # a gap: 15:25 .. 15:40 missing
    return store


class S3Server:
    """A real S3-compatible server (moto's, in a thread) on loopback, and the environment that
    points processes at it: the same variables docker-compose.yml sets for MinIO."""

    def __init__(self) -> None:
        import logging
        import socket

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "nowcast", "AWS_SECRET_ACCESS_KEY": "nowcast-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
                    "NOWCAST_LEASE_SECONDS": "6"}  # a killed writer's lease expires in seconds, not a minute
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def bucket(self, name: str) -> str:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import fsspec

    server = S3Server()
    saved_env = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": server.endpoint}  # what FSSPEC_S3_ENDPOINT_URL gives a new process
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


@pytest.fixture
def s3_store(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """An empty bucket per test, with the archive's URL in it."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    return s3_server.bucket(name) + "/archive.zarr"


def kill_9_when(proc: subprocess.Popen, ready, what: str, timeout: float = 180.0) -> None:
    """``kill -9`` ``proc`` as soon as ``ready()`` is true; fail if it ends or stalls first."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"{what} finished before it could be killed"
            assert time.monotonic() < deadline, f"{what} made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def hold_writer_lock(store: str, product: str) -> subprocess.Popen:
    """Another process holding ``product``'s writer lock (until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom pipelines.locking import writer_lock\n"
        f"with writer_lock({store!r}, {product!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder
