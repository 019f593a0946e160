"""The deployed set of docker-compose.yml, run for real: `make compose-test` (README, Deploy).

deploy/compose-test.sh starts the engine, builds the images and runs this module with
NOWCAST_COMPOSE_TEST=1; .ci/run runs it after `make test`. Each test is one step of the contract, in
order, against one stack (project nowcast-compose-test, its ports on 127.0.0.1 only):

  1. `up`: every long-running service becomes healthy (the healthchecks probe /readyz and the S3 endpoint)
  2. real FMI radar dropped into the watched folder reaches the archive on the S3 server; /v1/products lists it
  3. POST /v1/forecast from the archive returns frames; the viewer page and its assets load
  4. the trainer trains (deploy/compose-test/train-tiny.yaml), verifies and promotes; the API serves the
     promoted version without a restart
  5. `run --rm backfill` writes forecasts to the object store
  6. the API's process killed: the restart policy brings it back; `docker kill`: `up -d` does; `down` then
     `up`: the archive, the registry and the ingest ledger are all still there
  7. `down -v` leaves no container, volume or network behind; the engine compose-test started is stopped

A step that cannot run because an earlier one failed fails too, naming that step. Timings (up to healthy,
ingest, training, restarts) are written to the report (NOWCAST_COMPOSE_REPORT).
Without NOWCAST_COMPOSE_TEST=1 (the plain `make test`) the module is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import REPO, sample_files

pytestmark = pytest.mark.skipif(
    os.environ.get("NOWCAST_COMPOSE_TEST") != "1",
    reason="the compose check runs under `make compose-test` (.ci/run runs it after make test): "
           "it needs a Docker engine and builds the images",
)

if os.environ.get("NOWCAST_COMPOSE_TEST") == "1" and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    raise pytest.UsageError("tests/test_compose.py is one run of seven steps in order: run it with `-n 0` "
                            "(make compose-test does), not spread over pytest-xdist workers")

PROJECT = os.environ.get("NOWCAST_COMPOSE_PROJECT", "nowcast-compose-test")
COMPOSE = shlex.split(os.environ.get("NOWCAST_COMPOSE_CMD", "docker compose"))
#: MinIO where its images can be pulled (NOWCAST_COMPOSE_STORE=minio), else the local S3 server
USE_MINIO = os.environ.get("NOWCAST_COMPOSE_STORE", "local") == "minio"
FILES = ["docker-compose.yml", *([] if USE_MINIO else ["docker-compose.local.yml"]),
         "deploy/compose-test/docker-compose.test.yml"]
LONG_RUNNING = ["object-store", "ingest-watch", "trainer", "api"]
PRODUCT = "fmi"
BUCKET = "nowcast"
REPORT = Path(os.environ.get("NOWCAST_COMPOSE_REPORT", Path(tempfile.gettempdir()) / "nowcast-compose-test.json"))

#: which steps passed; a later step that needs a failed one fails at once, naming it
PASSED: set[int] = set()
TIMINGS: dict[str, Any] = {}


def needs(*steps: int) -> None:
    missing = [s for s in steps if s not in PASSED]
    if missing:
        pytest.fail(f"needs step(s) {', '.join(map(str, missing))}, which did not pass")


def record(**values: Any) -> None:
    TIMINGS.update(values)
    previous = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    REPORT.write_text(json.dumps({**previous, **TIMINGS}, indent=2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Pending(str):
    """What a check returns while it is not there yet: why not (shown when the wait times out)."""


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 2.0,
             on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy that is not ``Pending``; return that. On timeout
    fail, naming ``what``, the last answer and ``on_timeout()`` (the services' logs)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last = Pending(f"{type(exc).__name__}: {exc}")
        if last and not isinstance(last, Pending):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {str(last)[:500]}\n{on_timeout()}")


class Stack:
    """One compose project: its environment, compose and docker commands, HTTP and S3 clients."""

    def __init__(self, incoming: Path) -> None:
        self.incoming = incoming
        self.api_key = secrets.token_hex(12)
        self.s3_key, self.s3_secret = f"ct{secrets.token_hex(4)}", secrets.token_hex(16)
        self.api_port, self.s3_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "NOWCAST_S3_ACCESS_KEY": self.s3_key,
            "NOWCAST_S3_SECRET_KEY": self.s3_secret,
            "NOWCAST_BUCKET": BUCKET,
            "NOWCAST_API_KEYS": json.dumps([self.api_key]),
            "NOWCAST_API_PORT": str(self.api_port),
            "NOWCAST_S3_PORT": str(self.s3_port),
            "MINIO_CONSOLE_PORT": str(free_port()),
            "NOWCAST_INCOMING": str(incoming),
            "NOWCAST_PRODUCT": PRODUCT,
            "NOWCAST_FORMAT": "fmi_pgm",
            "NOWCAST_HEALTH_INTERVAL": "3s",
            "NOWCAST_INGEST_INTERVAL_S": "3",
            "NOWCAST_RELOAD_INTERVAL_S": "2",
            "NOWCAST_TRAIN_CONFIG": "/etc/nowcast/train-tiny.yaml",
            "NOWCAST_PROMOTION_WINDOW_HOURS": "1",
            "NOWCAST_TRAIN_RETRY_S": "15",
            "NOWCAST_TRAIN_EVERY_S": "86400",
            "COMPOSE_PROJECT_NAME": PROJECT,
        }
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.headers = {"X-API-Key": self.api_key}

    # -- commands ---------------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [*COMPOSE, "-p", PROJECT, *(a for f in FILES for a in ("-f", f)), *args]
        result = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                        f"{result.stderr[-3000:]}")
        return result

    def docker(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            pytest.fail(f"`docker {' '.join(args)}` exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout.strip()

    def container(self, service: str) -> str:
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--filter", f"label=com.docker.compose.service={service}").split()
        if len(ids) != 1:
            pytest.fail(f"expected one container of {service}, found {len(ids)}")
        return ids[0]

    def state(self, service: str) -> dict:
        return json.loads(self.docker("inspect", "-f", "{{json .State}}", self.container(service)))

    def restarts(self, service: str) -> int:
        return int(self.docker("inspect", "-f", "{{.RestartCount}}", self.container(service)))

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--timestamps", "--tail", str(tail), *services, check=False).stdout

    def project_resources(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={PROJECT}"
        return {
            "containers": self.docker("ps", "-aq", "--filter", label).split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", label).split(),
            "networks": self.docker("network", "ls", "-q", "--filter", label).split(),
        }

    # -- clients ----------------------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=60, **kwargs)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.headers, json=body, timeout=300)

    def storage_options(self) -> dict:
        return {"key": self.s3_key, "secret": self.s3_secret, "use_listings_cache": False,
                "endpoint_url": f"http://127.0.0.1:{self.s3_port}"}

    def s3(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options())

    # -- waiting ----------------------------------------------------------------------------------
    def healthy(self) -> dict[str, str]:
        status = {}
        for service in LONG_RUNNING:
            state = self.state(service)
            status[service] = state.get("Health", {}).get("Status", "no healthcheck") if state["Running"] \
                else f"not running ({state['Status']}, exit {state['ExitCode']})"
        return status

    def wait_healthy(self, timeout: float = 420) -> float:
        def all_healthy() -> bool | str:
            status = self.healthy()
            return all(s == "healthy" for s in status.values()) or Pending(status)

        started = time.monotonic()
        wait_for("every long-running service to be healthy", all_healthy, timeout, every=1,
                 on_timeout=lambda: self.logs(tail=30))
        return time.monotonic() - started

    def products(self) -> dict[str, dict]:
        response = self.get("/v1/products")
        response.raise_for_status()
        return {p["name"]: p for p in response.json()["products"]}

    def production_version(self) -> str | None:
        response = self.get("/v1/models")
        response.raise_for_status()
        return next((m["version"] for m in response.json()["models"] if m["name"] == "production"), None)

    def registry_production(self) -> str:
        result = self.compose("exec", "-T", "trainer", "cat", "/registry/production", check=False)
        return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def stack() -> Stack:
    incoming = Path(tempfile.mkdtemp(prefix="nowcast-compose-incoming-"))
    incoming.chmod(0o755)  # the services run as a non-root user and read it through a bind mount
    stack = Stack(incoming)
    record(project=PROJECT, compose=" ".join(COMPOSE), object_store="MinIO" if USE_MINIO else "local (moto)")
    yield stack
    if 7 not in PASSED:  # a failed run leaves nothing running either
        stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
    shutil.rmtree(incoming, ignore_errors=True)


def test_step1_every_service_becomes_healthy(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", check=False)  # a run cut short before
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build")
    TIMINGS["up_command_s"] = round(time.monotonic() - started, 1)
    stack.wait_healthy()
    record(up_to_healthy_s=round(time.monotonic() - started, 1))
    assert stack.state("create-bucket")["ExitCode"] == 0
    # the probes are real: the API's checks /readyz, the object store's its S3 endpoint
    for service in LONG_RUNNING:
        test = json.loads(stack.docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}",
                                       stack.container(service)))
        assert test and test[0] == "CMD", (service, test)
    assert httpx.get(f"{stack.url}/readyz", timeout=30).status_code == 200
    # published ports listen on 127.0.0.1 only
    for service in ("api", "object-store"):
        ports = json.loads(stack.docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", stack.container(service)))
        bound = [b["HostIp"] for bindings in ports.values() if bindings for b in bindings]
        assert bound and set(bound) == {"127.0.0.1"}, (service, ports)
    # the API keys a site sets are enforced
    assert httpx.get(f"{stack.url}/v1/models", timeout=30).status_code == 401
    assert stack.get("/v1/models").status_code == 200
    # the app runs as a non-root user
    assert stack.compose("exec", "-T", "api", "id", "-u").stdout.strip() == "10001"
    PASSED.add(1)


def test_step2_radar_dropped_in_the_watched_folder_reaches_the_archive(stack: Stack) -> None:
    needs(1)
    files = sample_files("fmi")
    assert len(files) == 40, "the FMI sample of ../shared/data: 40 files of 28 Sep 2016, 14:45-18:00 UTC"
    staging = stack.incoming.parent / f"{stack.incoming.name}.staging"
    staging.mkdir()
    for path in files:  # whole files appear at once: copied aside, then renamed in
        shutil.copy2(path, staging / path.name)
    started = time.monotonic()
    for path in files:
        os.rename(staging / path.name, stack.incoming / path.name)
    staging.rmdir()

    product = wait_for("all 40 frames in GET /v1/products",
                       lambda: (p := stack.products().get(PRODUCT)) and p["frames"] == 40 and p or Pending(p),
                       timeout=300, on_timeout=lambda: stack.logs("ingest-watch"))
    record(ingest_s=round(time.monotonic() - started, 1))
    assert product["first_time"].startswith("2016-09-28T14:45") and product["last_time"].startswith("2016-09-28T18:00")
    # in the bucket on the S3 server: the archive, and the ledger of the watched folder
    fs = stack.s3()
    assert fs.exists(f"{BUCKET}/archive.zarr/{PRODUCT}/zarr.json")
    ledger = json.loads(fs.cat(f"{BUCKET}/archive.zarr/_ingest_ledger/{PRODUCT}.json"))
    assert sorted(Path(p).name for p in ledger) == sorted(p.name for p in files), ledger  # {path: size:mtime}
    # the values are the radar's: the last frame as the same importer decodes it here
    from pipelines.ingest import ingest
    from pipelines.store import ProductArchive

    local = tempfile.mkdtemp(prefix="nowcast-compose-ref-")
    try:
        ingest(files[-1:], f"{local}/ref.zarr", PRODUCT, fmt="fmi_pgm")
        want = ProductArchive(f"{local}/ref.zarr", PRODUCT).open().load()["precip"].values[-1]
    finally:
        shutil.rmtree(local, ignore_errors=True)
    with ProductArchive(f"s3://{BUCKET}/archive.zarr", PRODUCT, storage_options=stack.storage_options()).open() as ds:
        got = ds["precip"].isel(time=-1).values
    np.testing.assert_array_equal(got, want)
    assert np.nanmax(got) > 0  # rain, not an empty frame
    PASSED.add(2)


BBOX = [200_000, 400_000, 263_999, 463_999]  # 64 x 64 km of the FMI grid (its CRS, metres)


def test_step3_forecast_from_the_archive_and_the_viewer(stack: Stack) -> None:
    needs(2)
    response = stack.post("/v1/forecast", {"model": "optical_flow", "product": PRODUCT, "lead_steps": 3,
                                           "bbox": BBOX})
    assert response.status_code == 200, response.text[:2000]
    forecast = response.json()
    frames = np.array(forecast["frames"], dtype=float)
    assert frames.shape == (3, 64, 64), frames.shape
    assert forecast["init_time"].startswith("2016-09-28T18:00") and forecast["lead_minutes"] == [5, 10, 15]
    assert np.isfinite(frames).any()
    # the viewer: the page and every asset it links
    page = httpx.get(stack.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.status_code
    assets = re.findall(r'(?:href|src)="(static/[^"]+)"', page.text)
    assert assets, "the viewer page links no assets"
    for asset in assets:
        assert httpx.get(f"{stack.url}/{asset}", timeout=30).status_code == 200, asset
    # and what it draws: an observed frame of the product as a PNG
    frame = stack.get(f"/v1/products/{PRODUCT}/frame")
    assert frame.status_code == 200 and frame.content[:8] == b"\x89PNG\r\n\x1a\n", frame.status_code
    PASSED.add(3)


def test_step4_scheduled_training_promotes_and_the_api_serves_it_without_restart(stack: Stack) -> None:
    needs(2)
    api = stack.container("api")
    api_started = stack.state("api")["StartedAt"]
    started = time.monotonic()
    version = wait_for("the trainer to promote a model (/registry/production)", stack.registry_production,
                       timeout=600, every=3, on_timeout=lambda: stack.logs("trainer", tail=80))
    record(train_to_promotion_s=round(time.monotonic() - started, 1))
    # the scheduled run ends with exit 0 (promoted); the runs before it found too little of the archive
    wait_for("the trainer's run to end with exit 0 (promoted)",
             lambda: re.search(r'"event": "train-end", .*"exit": 0\b', stack.logs("trainer", tail=2000)),
             timeout=60, on_timeout=lambda: stack.logs("trainer", tail=80))
    meta = json.loads(stack.compose("exec", "-T", "trainer", "cat", f"/registry/versions/{version}/meta.json").stdout)
    assert meta["promotion"]["promoted"] is True, meta["promotion"]
    assert meta["training_data"]["products"] == [PRODUCT]

    promoted = time.monotonic()
    wait_for("the API to serve the promoted version", lambda: stack.production_version() == version,
             timeout=60, every=0.5, on_timeout=lambda: stack.logs("api"))
    record(promotion_to_served_s=round(time.monotonic() - promoted, 1))
    assert stack.container("api") == api and stack.state("api")["StartedAt"] == api_started, "the API restarted"
    assert stack.restarts("api") == 0
    response = stack.post("/v1/forecast", {"model": "production", "product": PRODUCT, "lead_steps": 3, "bbox": BBOX})
    assert response.status_code == 200, response.text[:2000]
    assert np.array(response.json()["frames"], dtype=float).shape == (3, 64, 64)
    PASSED.add(4)


def test_step5_backfill_writes_forecasts_to_the_object_store(stack: Stack) -> None:
    needs(4)
    import xarray as xr

    stack.env.update(BACKFILL_MODEL="production", BACKFILL_START="2016-09-28T17:30:00Z",
                     BACKFILL_END="2016-09-28T18:00:00Z", BACKFILL_WORKERS="1")
    started = time.monotonic()
    result = stack.compose("run", "--rm", "backfill", check=False, timeout=900)
    record(backfill_s=round(time.monotonic() - started, 1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    store = xr.open_zarr(f"s3://{BUCKET}/forecasts.zarr", storage_options=stack.storage_options())
    assert store["precip"].dims == ("init_time", "lead_time", "y", "x")
    assert store.sizes["init_time"] == 7 and bool(store["done"].all()), store["done"].values
    assert np.isfinite(store["precip"].isel(init_time=-1).values).any()
    # --rm: no backfill container is left
    leftover = stack.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                            "--filter", "label=com.docker.compose.service=backfill")
    assert not leftover, leftover
    PASSED.add(5)


def test_step6_restarts_and_down_up_keep_archive_registry_and_ledger(stack: Stack) -> None:
    needs(2, 4)
    frames, version = stack.products()[PRODUCT]["frames"], stack.production_version()
    fs = stack.s3()
    ledger_before = fs.cat(f"{BUCKET}/archive.zarr/_ingest_ledger/{PRODUCT}.json")

    # a crash (the API's process killed, as the kernel's OOM killer would): the restart policy brings it back
    restarts = stack.restarts("api")
    pid = stack.state("api")["Pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    started = time.monotonic()
    wait_for("the restart policy to bring the API back", lambda: stack.restarts("api") > restarts, timeout=60,
             every=0.5)
    wait_for("the restarted API to answer", lambda: stack.get("/readyz").status_code == 200, timeout=300,
             on_timeout=lambda: stack.logs("api"))
    record(api_crash_to_answer_s=round(time.monotonic() - started, 1))
    assert stack.products()[PRODUCT]["frames"] == frames

    # `docker kill`: the engine counts it as an operator's stop and suspends the restart policy until the
    # container is started again (Docker's documented rule); `up -d` starts it
    stack.docker("kill", stack.container("api"))
    time.sleep(5)
    assert not stack.state("api")["Running"], "docker kill is an operator's stop: the engine leaves it stopped"
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build")
    wait_for("the API to answer after docker kill and up -d", lambda: stack.get("/readyz").status_code == 200,
             timeout=300, on_timeout=lambda: stack.logs("api"))
    record(api_kill_up_to_answer_s=round(time.monotonic() - started, 1))

    # down, then up: the volumes keep the archive, the registry and the ledger
    stack.compose("down")
    assert not stack.project_resources()["containers"]
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy()
    record(down_up_to_healthy_s=round(time.monotonic() - started, 1))
    assert stack.products()[PRODUCT]["frames"] == frames, "the archive"
    assert stack.registry_production() == version and stack.production_version() == version, "the registry"
    assert fs.cat(f"{BUCKET}/archive.zarr/_ingest_ledger/{PRODUCT}.json") == ledger_before, "the ingest ledger"
    # the watcher, restarted over the same folder, takes nothing twice: several polls later (3 s apart) it
    # has reported no ingest (one '{"poll": ...}' line per poll that ingested) and the archive is the same
    time.sleep(10)
    assert '"poll"' not in stack.logs("ingest-watch", tail=500), stack.logs("ingest-watch")
    assert stack.products()[PRODUCT]["frames"] == frames
    if 5 in PASSED:
        assert fs.exists(f"{BUCKET}/forecasts.zarr/zarr.json"), "the backfill's output"
    PASSED.add(6)


def test_step7_down_v_leaves_nothing_and_the_engine_is_stopped(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    left = stack.project_resources()
    assert left == {"containers": [], "volumes": [], "networks": []}, left
    if os.environ.get("NOWCAST_ENGINE_STARTED_HERE") == "1":
        # compose-test started this engine: stop it, and see that it is gone
        result = subprocess.run([str(REPO / "deploy" / "engine.sh"), "stop"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert subprocess.run(["docker", "info"], capture_output=True).returncode != 0, "the engine still answers"
        record(engine="started by compose-test, stopped")
    else:
        record(engine="already running before compose-test; left running")
    PASSED.add(7)
