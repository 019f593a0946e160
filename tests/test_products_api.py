"""The read endpoints the viewer uses (GET /v1/products, .../times, .../frame, POST /v1/forecast/frames)
and the viewer's own routes, against ``nowcast serve`` on loopback over real FMI radar (issue 15)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pyproj import CRS, Transformer
from test_service import start_server

from pipelines.plots import MAX_RAIN_MM_H, RAIN_COLOURS, RAIN_LEVELS
from pipelines.store import ProductArchive

KEY = {"X-API-Key": "products-key"}


@pytest.fixture(scope="module")
def served(workdir: Path, archive: str) -> Iterator[str]:
    """14 real FMI frames, 14:45 .. 16:00 UTC with 15:35 and 15:40 missing; an API key is required."""
    yield from start_server(workdir, {"store": archive, "models": ["persistence"], "api_keys": [KEY["X-API-Key"]]})


def get(url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", params=params, headers=KEY, timeout=60)


def rgba(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGBA"))


def expected_rgba(field: np.ndarray) -> np.ndarray:
    """The colours pipelines/plots.py gives each rate: transparent dry, grey nodata."""
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) + (255,) for c in RAIN_COLOURS]
    out = np.zeros((*field.shape, 4), np.uint8)
    # in float32, as the frames are served: the archive's hundredths (1.00 mm/h) decode to 0.99999998 in float64
    values = np.nan_to_num(field.astype(np.float32), nan=0.0)
    for k, colour in enumerate(colours):
        out[(values >= RAIN_LEVELS[k]) & (values < ([*RAIN_LEVELS, MAX_RAIN_MM_H])[k + 1])] = colour
    out[values >= MAX_RAIN_MM_H] = (0x3F, 0x00, 0x7D, 255)
    out[np.isnan(field)] = (0xD9, 0xD9, 0xD9, 255)
    return out


def test_products_need_the_key_and_describe_the_archive(served: str) -> None:
    denied = httpx.get(f"{served}/v1/products")
    assert denied.status_code == 401 and "API key is required" in denied.json()["error"]["message"]
    body = get(served, "/v1/products").json()
    assert body["colour_scale"]["levels"] == [*RAIN_LEVELS, MAX_RAIN_MM_H]
    assert body["colour_scale"]["colours"] == RAIN_COLOURS and body["colour_scale"]["nodata"] == "#d9d9d9"
    (fmi,) = body["products"]
    assert (fmi["name"], fmi["frames"], fmi["step_minutes"]) == ("fmi", 14, 5.0)
    assert (fmi["first_time"], fmi["last_time"]) == ("2016-09-28T14:45:00Z", "2016-09-28T16:00:00Z")
    grid = fmi["grid"]
    assert (grid["ny"], grid["nx"], grid["units"]) == (1226, 760, "m") and "+proj=stere" in grid["crs"]
    lon, lat = grid["corners_lonlat"]["bottom_left"]
    assert 15 < lon < 22 and 56 < lat < 60  # south-west Finland


def test_the_graticule_lies_on_its_latitudes_and_longitudes(served: str) -> None:
    fmi = get(served, "/v1/products").json()["products"][0]
    grid = fmi["grid"]
    to_lonlat = Transformer.from_crs(CRS.from_proj4(grid["crs"]), "EPSG:4326", always_xy=True)
    lines = {line["label"]: line for line in fmi["graticule"]}
    assert {"60°N", "64°N", "25°E"} <= set(lines), sorted(lines)
    for line in fmi["graticule"]:
        points = np.array([p for segment in line["segments"] for p in segment])
        x = grid["x_range"][0] + points[:, 0] * grid["dx"]
        y = grid["y_range"][1] - points[:, 1] * grid["dy"]
        lon, lat = to_lonlat.transform(x, y)
        along = lat if line["kind"] == "lat" else lon
        np.testing.assert_allclose(along, line["value"], atol=1e-3, err_msg=line["label"])
        c, r = line["label_at"]
        assert 0 <= c <= grid["nx"] and 0 <= r <= grid["ny"]


def test_a_frame_png_has_the_archives_rain_in_the_colour_scale(served: str, archive: str) -> None:
    latest = get(served, "/v1/products/fmi/frame")
    assert latest.status_code == 200 and latest.headers["content-type"] == "image/png"
    assert latest.headers["x-valid-time"] == "2016-09-28T16:00:00Z"
    at = get(served, "/v1/products/fmi/frame", time="2016-09-28T15:05:00+00:00")
    assert at.headers["x-valid-time"] == "2016-09-28T15:05:00Z" and at.content != latest.content
    with ProductArchive(archive, "fmi").open() as ds:
        field = ds["precip"].sel(time=np.datetime64("2016-09-28T15:05:00", "ns")).values
    picture = rgba(at.content)
    assert picture.shape == (1226, 760, 4)  # one pixel per grid cell, row 0 = north
    expected = expected_rgba(field)
    assert (picture[..., 3] == 0).mean() > 0.2 and ((field >= 0.1).mean() > 0.05)  # dry and rain both there
    mismatch = (picture != expected).any(axis=-1) & ~((picture[..., 3] == 0) & (expected[..., 3] == 0))
    assert not mismatch.any(), f"{mismatch.sum()} pixels differ from the colour scale"


@pytest.mark.parametrize(("path", "params", "status", "message"), [
    ("/v1/products/opera/frame", {}, 404, "no product 'opera'"),
    ("/v1/products/opera/times", {}, 404, "no product 'opera'"),
    ("/v1/products/fmi/frame", {"time": "2016-09-28T15:35:00Z"}, 404, "no frame of 'fmi' at 2016-09-28T15:35:00Z"),
    ("/v1/products/fmi/frame", {"time": "yesterday"}, 422, "time"),
    ("/v1/products/fmi/frame", {"time": "1800-01-01T00:00:00Z"}, 422, "time year 1800"),
    ("/v1/products/fmi/times", {"limit": "0"}, 422, "limit"),
])
def test_bad_product_or_time_is_a_4xx_that_names_it(served: str, path: str, params: dict, status: int,
                                                     message: str) -> None:
    response = get(served, path, **params)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_times_are_listed_newest_last_within_start_end_and_limit(served: str) -> None:
    everything = get(served, "/v1/products/fmi/times").json()
    assert len(everything["times"]) == 14 and not everything["truncated"] and everything["step_minutes"] == 5.0
    assert "2016-09-28T15:35:00Z" not in everything["times"]  # the gap
    window = get(served, "/v1/products/fmi/times", start="2016-09-28T15:20:00Z", end="2016-09-28T15:50:00Z",
                 limit="3").json()
    assert window["times"] == ["2016-09-28T15:30:00Z", "2016-09-28T15:45:00Z", "2016-09-28T15:50:00Z"]
    assert window["truncated"]


def test_forecast_frames_are_one_png_per_lead(served: str) -> None:
    body = {"model": "persistence", "lead_steps": 3, "product": "fmi", "time": "2016-09-28T15:30:00Z"}
    assert httpx.post(f"{served}/v1/forecast/frames", json=body).status_code == 401
    response = httpx.post(f"{served}/v1/forecast/frames", json=body, headers=KEY, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["init_time"] == "2016-09-28T15:30:00Z" and answer["lead_minutes"] == [5.0, 10.0, 15.0]
    assert answer["times"] == ["2016-09-28T15:35:00Z", "2016-09-28T15:40:00Z", "2016-09-28T15:45:00Z"]
    assert (answer["grid"]["ny"], answer["grid"]["nx"]) == (1226, 760) and "+proj=stere" in answer["grid"]["crs"]
    observed = rgba(get(served, "/v1/products/fmi/frame", time="2016-09-28T15:30:00Z").content)
    assert len(answer["frames"]) == 3
    for frame in answer["frames"]:
        prefix, data = frame.split(",", 1)
        assert prefix == "data:image/png;base64"
        np.testing.assert_array_equal(rgba(base64.b64decode(data)), observed)  # persistence: the init frame
    unknown = httpx.post(f"{served}/v1/forecast/frames", json={**body, "model": "unet"}, headers=KEY)
    assert unknown.status_code == 404 and "unknown model 'unet'" in unknown.json()["error"]["message"]
    gap = httpx.post(f"{served}/v1/forecast/frames", json={**body, "time": "2016-09-28T15:35:00Z"}, headers=KEY)
    assert gap.status_code == 422 and "not a frame of 'fmi'" in gap.json()["error"]["message"]
    plain = httpx.post(f"{served}/v1/forecast", json={**body, "lead_steps": 1}, headers=KEY, timeout=60).json()
    # the contract's fields, plus the identity of the weights that made it (issue 31)
    assert set(plain) == {"model", "identity", "units", "init_time", "step_minutes", "lead_minutes", "times", "frames",
                          "grid"}


def test_the_viewer_page_and_its_files_are_open_and_only_those(served: str) -> None:
    page = httpx.get(f"{served}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/viewer.js"' in page.text and "http" not in page.text.split("<body")[1]  # no CDN
    script = httpx.get(f"{served}/static/viewer.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{served}/static/viewer.css").headers["content-type"].startswith("text/css")
    for bad in ("/static/missing.js", "/static/..%2Fapp.py", "/static/.hidden.css", "/static/viewer.py"):
        response = httpx.get(f"{served}{bad}")
        assert response.status_code == 404, bad
