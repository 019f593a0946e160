"""The forecast service, started for real (``nowcast serve``) and spoken to over HTTP on loopback."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import xarray as xr
import yaml
from PIL import Image

from nowcast.forecaster import load_forecaster
from pipelines.store import ProductArchive

NOWCAST = str(Path(sys.executable).with_name("nowcast"))
#: the server process behind each url started here (for memory figures)
SERVER_PIDS: dict[str, int] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, settings: dict) -> Iterator[str]:
    config = tmp / f"service-{len(list(tmp.glob('service-*.yaml')))}.yaml"
    config.write_text(yaml.safe_dump(settings))
    port = free_port()
    log = open(tmp / f"{config.stem}.log", "w")
    proc = subprocess.Popen([NOWCAST, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {(tmp / f'{config.stem}.log').read_text()[-3000:]}")
        time.sleep(0.2)
    SERVER_PIDS[url] = proc.pid
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def server(workdir: Path, archive: str, small_checkpoint: Path) -> Iterator[str]:
    yield from start_server(workdir, {
        "store": archive, "models": ["persistence", "optical_flow", f"convlstm={small_checkpoint}"],
        "max_grid_pixels": 300 * 300, "max_lead_steps": 12, "batch_wait_ms": 50, "max_batch_size": 16,
    })


@pytest.fixture(scope="module")
def secured(workdir: Path, archive: str) -> Iterator[str]:
    yield from start_server(workdir, {
        "store": archive, "models": ["persistence"], "api_keys": ["key-one", "key-two"],
        "max_body_bytes": 20_000, "inference_timeout_s": 0.000001, "micro_batching": False,
    })


def inline(model: str = "persistence", lead: int = 3, t: int = 4, h: int = 8, w: int = 10, **extra) -> dict:
    rng = np.random.default_rng(0)
    frames = np.round(rng.gamma(0.5, 2.0, size=(t, h, w)), 2).tolist()
    return {"model": model, "lead_steps": lead, "frames": frames, "step_minutes": 5,
            "end_time": "2021-07-01T12:00:00Z", **extra}


def model_counter(url: str, metric: str, model: str) -> float:
    """A per-model Prometheus counter from the service's /metrics (0 before its first increment)."""
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'{metric}{{model="{model}"}} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def forward_passes(url: str, model: str) -> float:
    return model_counter(url, "nowcast_forward_passes_total", model)


def dropped_requests(url: str, model: str) -> float:
    """Queued forecasts the service dropped because their clients had stopped waiting."""
    return model_counter(url, "nowcast_dropped_requests_total", model)


def test_health_readiness_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["status"] == "ready" and ready["products"] == ["fmi"]
    assert set(ready["models"]) == {"persistence", "optical_flow", "convlstm"}
    httpx.post(f"{server}/v1/forecast", json=inline())
    metrics = httpx.get(f"{server}/metrics").text
    assert 'nowcast_http_requests_total{method="POST",route="/v1/forecast",status="200"}' in metrics
    for name in ("nowcast_http_request_seconds_bucket", "nowcast_batch_size_bucket", "nowcast_inference_seconds_sum"):
        assert name in metrics


def test_models_route_lists_every_model_with_its_constraints(server: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()["models"]}
    assert set(models) == {"persistence", "optical_flow", "convlstm"}
    for m in models.values():
        assert {"name", "input_steps", "max_lead_steps", "step_minutes", "architecture", "grid"} <= set(m)
        assert m["max_lead_steps"] == 12
    assert models["convlstm"]["input_steps"] == 4 and models["convlstm"]["grid"]["multiple_of"] == 1
    assert models["convlstm"]["step_minutes"] == 5.0 and models["convlstm"]["training_data"]["products"] == ["synth"]
    assert models["persistence"]["step_minutes"] is None  # a baseline has no step of its own
    assert models["optical_flow"]["input_steps"] == 3 and models["persistence"]["kind"] == "baseline"


def test_models_and_their_forecasts_show_the_identity_verification_records(server: str, small_checkpoint: Path) -> None:
    """Issue 31, item 1: /v1/models and every forecast answer carry name@fingerprint, the identity the
    live verification ledger keeps its rows by, so a user can tell which weights answered."""
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()["models"]}
    fingerprint = load_forecaster(str(small_checkpoint)).fingerprint
    assert models["convlstm"]["fingerprint"] == fingerprint and len(fingerprint) == 64
    assert models["convlstm"]["identity"] == f"convlstm@{fingerprint[:12]}"
    assert models["persistence"]["identity"] == "persistence" and models["persistence"]["fingerprint"] is None
    body = httpx.post(f"{server}/v1/forecast", json=inline("convlstm", lead=2)).json()
    assert body["identity"] == models["convlstm"]["identity"]
    netcdf = httpx.post(f"{server}/v1/forecast", json=inline("convlstm", lead=2),
                        headers={"Accept": "application/x-netcdf"})
    with tempfile.NamedTemporaryFile(suffix=".nc") as f:
        f.write(netcdf.content)
        f.flush()
        with xr.open_dataset(f.name) as ds:
            assert ds.attrs["model_identity"] == models["convlstm"]["identity"]


def test_inline_forecast_contract(server: str) -> None:
    response = httpx.post(f"{server}/v1/forecast", json=inline("optical_flow", lead=4))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "optical_flow" and body["units"] == "mm/h"
    assert body["times"] == ["2021-07-01T12:05:00Z", "2021-07-01T12:10:00Z", "2021-07-01T12:15:00Z",
                             "2021-07-01T12:20:00Z"]
    assert np.asarray(body["frames"]).shape == (4, 8, 10)


def test_product_forecast_latest_and_at_a_time_with_a_bbox(server: str) -> None:
    latest = httpx.post(f"{server}/v1/forecast", json={"model": "convlstm", "lead_steps": 2, "product": "fmi",
                                                       "bbox": [200_000, 400_000, 263_999, 463_999]})
    assert latest.status_code == 200, latest.text
    body = latest.json()
    assert body["times"] == ["2016-09-28T16:05:00Z", "2016-09-28T16:10:00Z"]
    assert np.asarray(body["frames"]).shape == (2, 64, 64) and "+proj=stere" in body["grid"]["crs"]
    earlier = httpx.post(f"{server}/v1/forecast", json={"model": "persistence", "lead_steps": 1, "product": "fmi",
                                                        "time": "2016-09-28T15:05:00Z",
                                                        "bbox": [200_000, 400_000, 263_999, 463_999]})
    assert earlier.status_code == 200 and earlier.json()["times"] == ["2016-09-28T15:10:00Z"]


@pytest.mark.parametrize("accept", ["application/x-netcdf", "image/gif", "image/png"])
def test_output_formats(server: str, accept: str) -> None:
    body = {"model": "persistence", "lead_steps": 3, "product": "fmi", "bbox": [200_000, 400_000, 263_999, 463_999]}
    response = httpx.post(f"{server}/v1/forecast", json=body, headers={"Accept": accept})
    assert response.status_code == 200 and response.headers["content-type"].startswith(accept)
    if accept == "application/x-netcdf":
        with tempfile.NamedTemporaryFile(suffix=".nc") as f:
            f.write(response.content)
            f.flush()
            with xr.open_dataset(f.name) as ds:
                assert ds["precip"].shape == (3, 64, 64) and ds["precip"].attrs["units"] == "mm/h"
                assert ds["precip"].attrs["grid_mapping"] == "crs" and "crs_wkt" in ds["crs"].attrs
                assert str(ds["time"].values[0]).startswith("2016-09-28T16:05")
    else:
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == accept.split("/")[1].upper()
            if accept == "image/gif":
                assert image.n_frames == 3


def test_upload_npy_and_netcdf(server: str) -> None:
    frames = np.random.default_rng(1).gamma(0.5, 2.0, size=(4, 16, 16))
    buffer = io.BytesIO()
    np.save(buffer, frames)
    form = {"model": "persistence", "lead_steps": "2", "end_time": "2021-07-01T12:00:00Z", "step_minutes": "5"}
    response = httpx.post(f"{server}/v1/forecast/upload", data=form, files={"file": ("f.npy", buffer.getvalue())})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["frames"])[1], frames[-1], atol=1e-3)
    netcdf = httpx.post(f"{server}/v1/forecast", json={"model": "persistence", "lead_steps": 4, "product": "fmi",
                                                       "bbox": [200_000, 400_000, 231_999, 431_999]},
                        headers={"Accept": "application/x-netcdf"}).content
    again = httpx.post(f"{server}/v1/forecast/upload", data={**form, "model": "optical_flow"},
                       files={"file": ("f.nc", netcdf)})
    assert again.status_code == 200, again.text
    assert np.asarray(again.json()["frames"]).shape == (2, 32, 32) and again.json()["grid"]["crs"]


BAD_REQUESTS = {
    "unknown model": ({"model": "unet"}, 404, "unknown model 'unet'"),
    "lead over the maximum": ({"lead_steps": 13}, 422, "over the maximum 12"),
    "grid over the maximum": ({"h": 301, "w": 301}, 422, "over the maximum 90000"),
    "too few frames": ({"model": "optical_flow", "t": 2}, 422, "needs 3 input frames"),
    "step too far to resample": ({"model": "convlstm", "step_minutes": 30}, 422, "works at 5-minute steps"),
    "neither frames nor product": ({"drop": "frames"}, 422, "either 'frames'"),
    "uneven times": ({"times": ["2021-07-01T11:45:00Z", "2021-07-01T11:50:00Z", "2021-07-01T11:55:00Z",
                                "2021-07-01T12:01:00Z"]}, 422, "not evenly spaced"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_that_names_the_problem(server: str, case: str) -> None:
    change, status, message = BAD_REQUESTS[case]
    shape = {k: change.pop(k) for k in ("t", "h", "w") if k in change}
    body = inline(**shape)
    if "drop" in change:
        body.pop(change.pop("drop"))
    body.update(change)
    response = httpx.post(f"{server}/v1/forecast", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_nodata_goes_in_as_null_and_comes_out_as_null_never_as_dry(server: str) -> None:
    body = inline(h=12, w=10)  # odd for the checkpoint's patch 2 too: padded inside
    for frame in body["frames"]:
        for row in frame[:3]:
            row[:] = [None] * len(row)  # the top three rows: outside the radar's coverage
    for model in ("persistence", "convlstm"):
        response = httpx.post(f"{server}/v1/forecast", json={**body, "model": model})
        assert response.status_code == 200, response.text
        frames = response.json()["frames"]
        assert all(v is None for frame in frames for row in frame[:3] for v in row), model
        assert all(v is not None and v >= 0 for frame in frames for row in frame[3:] for v in row), model
    inf = inline()
    inf["frames"][0][0][0] = float("inf")
    response = httpx.post(f"{server}/v1/forecast", content=json.dumps(inf),
                          headers={"content-type": "application/json"})
    assert response.status_code == 422 and "infinite" in response.json()["error"]["message"]


def test_product_forecasts_are_nodata_outside_the_radars_coverage_in_every_format(server: str, archive: str) -> None:
    bbox = [150_000, 876_500, 349_999, 1_075_500]  # the composite's western edge: part radar, part nothing
    with ProductArchive(archive, "fmi").open() as ds:
        last = ds["precip"].isel(time=-1).sel(x=slice(bbox[0], bbox[2]), y=slice(bbox[3], bbox[1])).values
    outside = np.isnan(last)
    assert 0.05 < outside.mean() < 0.95
    for model in ("persistence", "convlstm"):
        body = {"model": model, "lead_steps": 2, "product": "fmi", "bbox": bbox}
        frames = httpx.post(f"{server}/v1/forecast", json=body).json()["frames"]
        nulls = np.array([[[v is None for v in row] for row in frame] for frame in frames])
        assert (nulls == outside[None]).all(), model
        response = httpx.post(f"{server}/v1/forecast", json=body, headers={"Accept": "application/x-netcdf"})
        with tempfile.NamedTemporaryFile(suffix=".nc") as f:
            f.write(response.content)
            f.flush()
            with xr.open_dataset(f.name) as ds:
                assert (np.isnan(ds["precip"].values) == outside[None]).all(), model


def test_a_ten_minute_product_is_resampled_for_a_five_minute_network(server: str) -> None:
    body = inline(model="convlstm", t=3, step_minutes=10)  # 20 min of history covers the 15 it needs
    response = httpx.post(f"{server}/v1/forecast", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["lead_minutes"] == [10, 20, 30] and np.asarray(result["frames"]).shape == (3, 8, 10)


def test_a_huge_bad_request_gets_a_short_error(server: str) -> None:
    body = inline(t=4, h=100, w=100)
    body["frames"] = [[["x"] * 100 for _ in range(100)] for _ in range(4)]  # 40 000 bad values
    response = httpx.post(f"{server}/v1/forecast", json=body, timeout=120)
    assert response.status_code == 422
    assert len(response.content) < 4000, len(response.content)
    error = response.json()["error"]
    assert error["n_problems"] >= 40_000 and "more problem(s)" in error["message"]


def test_bad_values_and_shapes(server: str) -> None:
    negative = inline()
    negative["frames"][1][2][3] = -1.0
    assert "negative" in httpx.post(f"{server}/v1/forecast", json=negative).json()["error"]["message"]
    ragged = inline()
    ragged["frames"][0][0] = ragged["frames"][0][0][:-1]
    response = httpx.post(f"{server}/v1/forecast", json=ragged)
    assert response.status_code == 422 and "regular T x H x W" in response.json()["error"]["message"]
    strings = inline()
    strings["frames"][0][0][0] = "heavy"
    response = httpx.post(f"{server}/v1/forecast", json=strings)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    flat = {**inline(), "frames": [1.0, 2.0]}
    assert httpx.post(f"{server}/v1/forecast", json=flat).status_code == 422
    response = httpx.post(f"{server}/v1/forecast", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_archive_errors(server: str) -> None:
    def ask(**body):
        return httpx.post(f"{server}/v1/forecast", json={"model": "optical_flow", "lead_steps": 2, **body})

    assert ask(product="opera").status_code == 404 and "no product 'opera'" in ask(product="opera").text
    missing = ask(product="fmi", time="2016-09-28T12:00:00Z")
    assert missing.status_code == 422 and "not a frame of 'fmi'" in missing.json()["error"]["message"]
    gap = ask(product="fmi", time="2016-09-28T15:45:00Z")  # needs 15:35, 15:40, 15:45; 15:35 is missing
    assert gap.status_code == 422 and "not contiguous" in gap.json()["error"]["message"]
    outside = ask(product="fmi", bbox=[-9e6, -9e6, -8e6, -8e6])
    assert outside.status_code == 422 and "bbox" in outside.json()["error"]["message"]
    bad_upload = httpx.post(f"{server}/v1/forecast/upload", files={"file": ("x.txt", b"hello")},
                            data={"model": "persistence", "lead_steps": "1", "end_time": "2021-01-01T00:00:00Z"})
    assert bad_upload.status_code == 422 and "upload a .npy array or a NetCDF" in bad_upload.text
    unacceptable = httpx.post(f"{server}/v1/forecast", json=inline(), headers={"Accept": "text/csv"})
    assert unacceptable.status_code == 406


def test_concurrent_requests_share_forward_passes(server: str) -> None:
    before = forward_passes(server, "optical_flow")
    body = inline("optical_flow", lead=3, h=64, w=64)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{server}/v1/forecast", json=body, timeout=60), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["frames"] == responses[0].json()["frames"] for r in responses)
    passes = forward_passes(server, "optical_flow") - before
    assert 1 <= passes < 8, passes


def test_api_keys_guard_models_and_forecasts_but_not_health(secured: str) -> None:
    assert httpx.get(f"{secured}/healthz").status_code == 200
    assert httpx.get(f"{secured}/readyz").status_code == 200
    assert httpx.get(f"{secured}/metrics").status_code == 200
    denied = httpx.get(f"{secured}/v1/models")
    assert denied.status_code == 401 and "API key is required" in denied.json()["error"]["message"]
    assert httpx.get(f"{secured}/v1/models", headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(f"{secured}/v1/models", headers={"X-API-Key": "key-two"}).status_code == 200
    assert httpx.get(f"{secured}/v1/models", headers={"Authorization": "Bearer key-one"}).status_code == 200
    assert httpx.post(f"{secured}/v1/forecast", json=inline()).status_code == 401


def test_body_limit_and_inference_timeout(secured: str) -> None:
    headers = {"X-API-Key": "key-one"}
    big = inline(h=60, w=60)
    response = httpx.post(f"{secured}/v1/forecast", json=big, headers=headers)
    assert response.status_code == 413 and "over the limit of 20000 bytes" in response.json()["error"]["message"]
    slow = httpx.post(f"{secured}/v1/forecast", json=inline(h=4, w=4), headers=headers)
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "inference_timeout"
    assert "inference_timeout_s" in slow.json()["error"]["message"]  # the setting that governs it


def test_schemathesis_finds_no_server_error(server: str, workdir: Path) -> None:
    exe = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(exe), "run", f"{server}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all", "--request-timeout", "30",
         "--seed", "1"],
        capture_output=True, text=True, timeout=600, cwd=workdir,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_models_report_the_skill_the_model_store_and_the_model_card_recorded(
    workdir: Path, archive: str, small_checkpoint: Path
) -> None:
    from nowcast.model_store import ModelStore

    store = ModelStore(workdir / "skill-registry")
    version = store.register(small_checkpoint)
    meta = store.meta(version)
    meta["scores"] = [{"lead_minutes": 5.0, "csi": {"1.0": 0.61}}]
    store.write_meta(version, meta)
    models = ["predrnn_flow", f"versioned={store.versions / version / 'model.ckpt'}", f"bare={small_checkpoint}"]
    for url in start_server(workdir, {"store": archive, "models": models}):
        listed = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
    shipped = listed["predrnn_flow"]["skill"]
    assert shipped["val_csi_1mm_30min"] > 0.5
    assert set(shipped["test_events"]) == {"FMI 2016-09-28", "MeteoSwiss 2016-07-11"}
    assert 0 < shipped["test_events"]["FMI 2016-09-28"]["csi_5mm_30min"] < 1
    assert listed["versioned"]["skill"]["scores"][0]["csi"]["1.0"] == 0.61
    assert listed["bare"]["skill"] is None
    assert listed["bare"]["probability_matching"] == "none"  # no choice was made for a bare checkpoint
    assert listed["predrnn_flow"]["probability_matching"] == load_forecaster("predrnn_flow").probability_matching
