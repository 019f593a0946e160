"""Probability and ensemble outputs of the forecast service (``nowcast serve`` for real, over loopback):
the JSON and NetCDF contract, ``outputs`` in GET /v1/models, and the limits refused by name."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import xarray as xr
from test_service import start_server

from pipelines.store import ProductArchive

#: a real 64 x 64 FMI window with rain and the edge of the radar's coverage (nodata) in it
ROWS, COLS = slice(320, 384), slice(624, 688)
LEADS, MEMBERS = 3, 4
LIMITS = {"max_thresholds": 3, "max_members": 6, "default_members": MEMBERS,
          "max_ensemble_values": MEMBERS * LEADS * 64 * 64 + 1}


@pytest.fixture(scope="module")
def prob_server(workdir: Path, archive: str) -> Iterator[str]:
    yield from start_server(workdir, {"store": archive, "models": ["persistence", "steps"], "max_lead_steps": 6,
                                      **LIMITS})


@pytest.fixture(scope="module")
def real_frames(archive: str) -> np.ndarray:
    with ProductArchive(archive, "fmi").open() as ds:
        frames = ds["precip"].isel(time=slice(0, 4), y=ROWS, x=COLS).values
    assert np.isnan(frames[-1]).mean() > 0.05 and np.nanmean(frames[-1] >= 0.5) > 0.05, "pick a wet edge crop"
    return frames


def inline(frames: np.ndarray, **extra: object) -> dict:
    values = np.where(np.isnan(frames), None, np.round(frames, 3)).tolist()
    return {"model": "steps", "lead_steps": LEADS, "frames": values, "step_minutes": 5,
            "end_time": "2016-09-28T15:00:00Z", **extra}


def as_array(nested: list) -> np.ndarray:
    return np.array(nested, dtype=np.float64)  # null -> NaN


def netcdf(response: httpx.Response) -> xr.Dataset:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-netcdf")
    with tempfile.NamedTemporaryFile(suffix=".nc") as f:
        f.write(response.content)
        f.flush()
        with xr.open_dataset(f.name) as ds:
            return ds.load()


def test_models_list_their_outputs(prob_server: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"{prob_server}/v1/models").json()["models"]}
    assert models["steps"]["outputs"] == ["deterministic", "probability", "ensemble"]
    assert models["persistence"]["outputs"] == ["deterministic"]
    assert models["steps"]["kind"] == "baseline" and models["steps"]["input_steps"] == 3


def test_probability_json(prob_server: str, real_frames: np.ndarray) -> None:
    response = httpx.post(f"{prob_server}/v1/forecast", json=inline(real_frames, output="probability",
                                                                    thresholds=[0.5, 1, 5]), timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == "probability" and body["thresholds"] == [0.5, 1.0, 5.0]
    assert body["members"] == MEMBERS and len(body["times"]) == LEADS and "frames" not in body
    p = as_array(body["probabilities"])
    assert p.shape == (LEADS, 3, 64, 64)
    nodata = np.isnan(real_frames[-1])
    assert np.isnan(p[:, :, nodata]).all() and np.isfinite(p[:, :, ~nodata]).all()
    valid = p[:, :, ~nodata]
    assert valid.min() >= 0 and valid.max() <= 1 and valid.max() > 0
    assert (np.diff(valid, axis=1) <= 1e-6).all()  # a higher threshold is never more likely


def test_ensemble_json(prob_server: str, real_frames: np.ndarray) -> None:
    response = httpx.post(f"{prob_server}/v1/forecast", json=inline(real_frames, output="ensemble", members=3),
                          timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == "ensemble" and body["units"] == "mm/h"
    members = as_array(body["members"])
    assert members.shape == (3, LEADS, 64, 64)
    nodata = np.isnan(real_frames[-1])
    assert np.isnan(members[..., nodata]).all()
    assert np.isfinite(members[..., ~nodata]).all() and members[..., ~nodata].min() >= 0
    assert not np.allclose(members[0], members[1])  # different futures


def test_probability_and_ensemble_netcdf_are_cf(prob_server: str, real_frames: np.ndarray, archive: str) -> None:
    accept = {"Accept": "application/x-netcdf"}
    ds = netcdf(httpx.post(f"{prob_server}/v1/forecast", headers=accept, timeout=120,
                           json=inline(real_frames, output="probability", thresholds=[1, 5])))
    p = ds["probability_of_exceedance"]
    assert p.dims == ("time", "threshold", "y", "x") and p.attrs["units"] == "1"
    assert ds["threshold"].values.tolist() == [1.0, 5.0] and ds["threshold"].attrs["units"] == "mm/h"
    assert ds.attrs["Conventions"].startswith("CF-") and float(p.max()) <= 1.0
    # a product request: the archive's CRS travels with the members
    body = {"model": "steps", "lead_steps": 2, "product": "fmi", "output": "ensemble", "members": 2,
            "bbox": [200_000, 400_000, 263_999, 463_999]}
    ds = netcdf(httpx.post(f"{prob_server}/v1/forecast", json=body, headers=accept, timeout=120))
    assert ds["precip"].dims == ("realization", "time", "y", "x") and ds["precip"].shape == (2, 2, 64, 64)
    assert ds["realization"].attrs["standard_name"] == "realization" and ds["precip"].attrs["units"] == "mm/h"
    assert ds["precip"].attrs["grid_mapping"] == "crs" and "crs_wkt" in ds["crs"].attrs


def test_upload_asks_for_an_ensemble(prob_server: str, real_frames: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, real_frames)
    form = {"model": "steps", "lead_steps": "2", "end_time": "2016-09-28T15:00:00Z", "step_minutes": "5",
            "output": "probability", "thresholds": ["1", "2"], "members": "2"}
    response = httpx.post(f"{prob_server}/v1/forecast/upload", data=form, timeout=120,
                          files={"file": ("f.npy", buffer.getvalue())})
    assert response.status_code == 200, response.text
    assert as_array(response.json()["probabilities"]).shape == (2, 2, 64, 64)


@pytest.mark.parametrize(("extra", "status", "code", "named"), [
    ({"output": "probability", "thresholds": [0.5, 1, 2, 5]}, 422, "too_many_thresholds", "max_thresholds (3)"),
    ({"output": "ensemble", "members": 7}, 422, "too_many_members", "max_members (6)"),
    ({"output": "ensemble", "members": 6}, 422, "ensemble_too_large", "max_ensemble_values"),
    ({"output": "probability"}, 422, "missing_thresholds", "thresholds"),
    ({"output": "probability", "thresholds": [0]}, 422, "bad_thresholds", "above 0 mm/h"),
    ({"output": "ensemble", "model": "persistence"}, 422, "output_not_offered", "offers deterministic"),
    ({"thresholds": [1]}, 422, "bad_output", "probability"),
])
def test_limits_and_misuse_are_refused_by_name(prob_server: str, real_frames: np.ndarray, extra: dict, status: int,
                                               code: str, named: str) -> None:
    response = httpx.post(f"{prob_server}/v1/forecast", json=inline(real_frames, **extra), timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and named in error["message"]


def test_pictures_are_of_one_field_only(prob_server: str, real_frames: np.ndarray) -> None:
    response = httpx.post(f"{prob_server}/v1/forecast", json=inline(real_frames, output="ensemble"),
                          headers={"Accept": "image/png"})
    assert response.status_code == 406 and "application/json or application/x-netcdf" in response.text


def test_the_viewers_frames_route_draws_the_forecast_or_one_thresholds_probabilities(prob_server: str,
                                                                                     real_frames: np.ndarray) -> None:
    for extra in ({"output": "ensemble"}, {"output": "probability", "thresholds": [1, 5]}):
        response = httpx.post(f"{prob_server}/v1/forecast/frames", json=inline(real_frames, **extra))
        assert response.status_code == 422 and response.json()["error"]["code"] == "bad_output"
    response = httpx.post(f"{prob_server}/v1/forecast/frames", timeout=120,
                          json=inline(real_frames, output="probability", thresholds=[1]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == "probability" and body["thresholds"] == [1.0] and body["members"] == MEMBERS
    assert len(body["frames"]) == LEADS and all(f.startswith("data:image/png;base64,") for f in body["frames"])
    assert body["grid"]["ny"] == body["grid"]["nx"] == 64
