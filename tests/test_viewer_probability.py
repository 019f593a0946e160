"""The viewer's probability map (issue 28), in a real headless browser against ``nowcast serve`` on
loopback over real FMI radar: for each shown model that forecasts probabilities (``steps``, and the
shipped exceedance network), the map of P(rate >= t) at the picked threshold beside its forecast.

The page must ask the service for the probability frames (POST /v1/forecast/frames with ``"output":
"probability"`` and the threshold), draw them pixel for pixel as the service's probabilities are
(classes of 0.1, blank under 0.1, grey where there is no radar: nodata, not 0), with a 0..1 legend,
and follow the threshold picked. ``NOWCAST_VIEWER_PROBABILITY_SCREENSHOT=path.png`` saves the page
(docs/viewer_probability.png is one).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import sample_files
from PIL import Image
from test_service import start_server
from test_viewer import NODATA_RGB, _blocks, _hex, panel, wait_for
from test_viewer import browser as browser  # noqa: F401  (the fixture: Debian's headless chromium)

from pipelines.frame import Frame
from pipelines.grid import Grid
from pipelines.ingest import ingest
from pipelines.plots import PROBABILITY_COLOURS, PROBABILITY_LEVELS
from pipelines.store import ProductArchive

#: a real 128 x 128 FMI window with rain and the edge of the radar's coverage (nodata) in it
ROWS, COLS = slice(256, 384), slice(576, 704)
MODELS = ["steps", "convlstm_exceedance_taasrad19"]
#: lead steps the page asks for: steps is a baseline, asked up to the service's max_lead_steps
LEADS = 6
INIT = "2016-09-28T15:45:00Z"
PROBABILITY_RGB = np.stack([_hex(c) for c in PROBABILITY_COLOURS])
#: records every forecast request body the page sends, before its own script runs
RECORD_REQUESTS = """
window.__forecastBodies = [];
const originalFetch = window.fetch;
window.fetch = (url, options = {}) => {
  if (String(url).includes("v1/forecast") && options.body) window.__forecastBodies.push(JSON.parse(options.body));
  return originalFetch(url, options);
};
"""


@pytest.fixture(scope="module")
def crop_store(workdir: Path) -> str:
    """13 real FMI frames (14:45 .. 15:45 UTC) cropped to the window, as a product of their own: small
    enough for STEPS and the network to forecast in seconds on a CPU."""
    full = str(workdir / "full.zarr")
    ingest(sample_files("fmi", 13), full, "fmi", fmt="fmi_pgm", workers=1)
    archive = ProductArchive(full, "fmi")
    grid = archive.grid()
    crop = Grid(grid.crs_proj, grid.x[COLS], grid.y[ROWS])
    with archive.open() as ds:
        rain, times = ds["precip"].isel(y=ROWS, x=COLS).values, ds["time"].values
    store = str(workdir / "crop.zarr")
    ProductArchive(store, "fmi").write([
        Frame(time=t, rain_rate=r.astype(np.float32), grid=crop, attrs={"source_product": "fmi crop"},
              source=f"fmi-crop:{k}") for k, (t, r) in enumerate(zip(times, rain, strict=True))])
    return store


@pytest.fixture(scope="module")
def prob_viewer(workdir: Path, crop_store: str) -> Iterator[str]:
    yield from start_server(workdir, {"store": crop_store, "models": MODELS, "max_lead_steps": LEADS,
                                      "default_members": 4, "verification_interval_s": 1})


@pytest.fixture(scope="module")
def prob_page(browser: Any, prob_viewer: str) -> Any:
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_REQUESTS})
    browser.get(f"{prob_viewer}/?poll=2&frame_ms=250")
    wait_for(lambda: (panel(browser, "observed") or {}).get("loaded"), "the latest observed frame")
    return browser


def asked(page: Any) -> list[dict]:
    return page.execute_script("return window.__forecastBodies")


def probabilities(url: str, model: str, threshold: float) -> np.ndarray:
    """[lead, y, x] P(rate >= threshold) from POST /v1/forecast's JSON, NaN where nodata."""
    body = {"model": model, "product": "fmi", "time": INIT, "lead_steps": LEADS, "output": "probability",
            "thresholds": [threshold]}
    response = httpx.post(f"{url}/v1/forecast", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return np.array(response.json()["probabilities"], dtype=np.float64)[:, 0]


def png_classes(src: str) -> np.ndarray:
    """Palette index per pixel of a data: URL PNG (0 blank, 1 nodata, 2.. the probability classes)."""
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.mode == "P"
    return np.asarray(image)


def expected_classes(p: np.ndarray) -> np.ndarray:
    """What the picture of ``p`` must hold: 0 under 0.1, 1 nodata, 2 + k for levels[k] <= p < levels[k+1]."""
    classes = np.minimum(np.digitize(np.nan_to_num(p), PROBABILITY_LEVELS) + 1, len(PROBABILITY_COLOURS) + 1)
    classes[classes == 1] = 0
    classes[np.isnan(p)] = 1
    return classes


def probability_mask(rgb: np.ndarray) -> np.ndarray:
    distance = np.abs(rgb[:, :, None, :].astype(np.int16) - PROBABILITY_RGB[None, None]).max(axis=-1)
    return (distance <= 6).any(axis=-1)


def show_lead(page: Any, lead_minutes: int) -> None:
    """Move the slider to a lead, as a user drags it (history: 12 frames of 5 min before the init time)."""
    page.execute_script("""const s = document.getElementById('lead-slider');
        s.value = String(11 + arguments[0] / 5); s.dispatchEvent(new Event('input'));""", lead_minutes)
    wait_for(lambda: f"lead +{lead_minutes} min" in page.find_element("id", "lead-label").text, "the lead shown")


def test_probability_maps_are_asked_for_and_drawn_beside_the_forecasts(prob_page: Any, prob_viewer: str,
                                                                      crop_store: str, tmp_path: Path) -> None:
    from selenium.webdriver.support.select import Select

    page = prob_page
    picker = Select(page.find_element("id", "threshold"))
    assert page.find_element("id", "threshold-picker").is_displayed()
    assert picker.first_selected_option.get_attribute("value") == "1"  # 1 mm/h unless the user picked another
    assert [o.get_attribute("value") for o in picker.options] == ["off", "1", "5", "10"]
    names = [p.get_attribute("data-panel") for p in page.find_elements("css selector", "#panels .panel")]
    assert names == ["observed", "steps", "steps:probability", "convlstm_exceedance_taasrad19",
                     "convlstm_exceedance_taasrad19:probability"]
    legend = page.find_element("id", "probability-legend")
    assert legend.is_displayed() and "probability of rain rate ≥ 1 mm/h" in legend.text
    assert all(tick in legend.text.split() for tick in ("0", "0.1", "0.5", "0.9", "1", "no")), legend.text
    assert panel(page, "steps:probability")["kind"] == "missing"  # lead 0: nothing forecast yet

    show_lead(page, 15)
    for model in MODELS:
        wait_for(lambda m=model: (p := panel(page, f"{m}:probability"))["kind"] == "probability" and p["loaded"],
                 f"{model}'s probability map", timeout=120)
        assert panel(page, f"{model}:probability")["time"] == "2016-09-28T16:00:00Z"
        assert panel(page, f"{model}:probability")["width"] == 128  # one pixel per grid cell
        # the deterministic forecast beside it (its own request: it may finish after the probabilities)
        wait_for(lambda m=model: panel(page, m)["kind"] == "forecast", f"{model}'s forecast", timeout=120)
    # the page asked the service for them: one threshold, the model's leads, from the archive
    wanted = [b for b in asked(page) if b.get("output") == "probability"]
    assert sorted(b["model"] for b in wanted) == sorted(MODELS)
    assert all(b["thresholds"] == [1] and b["product"] == "fmi" and b["lead_steps"] == LEADS and b["time"] == INIT
               for b in wanted), wanted
    caption = page.find_element("css selector", '#panels .panel[data-panel="steps:probability"] figcaption').text
    assert "P(rate ≥ 1 mm/h)" in caption and "steps +15 min" in caption

    # what is drawn is P(rate >= 1 mm/h) at +15 min, pixel for pixel as the service forecasts it
    with ProductArchive(crop_store, "fmi").open() as ds:
        init_nodata = np.isnan(ds["precip"].sel(time=np.datetime64(INIT.rstrip("Z"), "ns")).values)
    assert 0.05 < init_nodata.mean() < 0.5  # the window reaches past the radar's coverage
    for model in MODELS:
        p = probabilities(prob_viewer, model, 1.0)[2]
        assert np.array_equal(np.isnan(p), init_nodata)  # no radar at the init time: no probability
        assert np.nanmax(p) >= 0.5, model  # the case has rain worth a probability
        drawn = png_classes(panel(page, f"{model}:probability")["src"])
        # the service's JSON is rounded to 3 decimals: a pixel on a class edge may fall either side
        same = (drawn == expected_classes(p)).mean()
        assert same > 0.995, (model, same)
        assert (drawn[init_nodata] == 1).all() and (drawn[~init_nodata] != 1).all()  # nodata is nodata, not 0

    # and the browser painted it: the map's screenshot holds the probability colours where the PNG has them
    element = page.find_element("css selector", '#panels .panel[data-panel="steps:probability"] .map')
    map_png = element.screenshot_as_png
    (tmp_path / "steps_probability.png").write_bytes(map_png)
    rgb = np.asarray(Image.open(io.BytesIO(map_png)).convert("RGB"))[2:-2, 2:-2]
    drawn = png_classes(panel(page, "steps:probability")["src"])
    coloured, screen = drawn >= 2, probability_mask(rgb)
    assert coloured.mean() > 0.05
    assert 0.6 < screen.mean() / coloured.mean() < 1.5, (screen.mean(), coloured.mean())
    assert np.corrcoef(_blocks(coloured).ravel(), _blocks(screen).ravel())[0, 1] > 0.9
    grey = (np.abs(rgb.astype(np.int16) - NODATA_RGB).max(axis=-1) <= 3).mean()
    assert abs(grey - init_nodata.mean()) < 0.1, (grey, init_nodata.mean())
    full = page.get_screenshot_as_png()
    (tmp_path / "viewer_probability.png").write_bytes(full)
    if os.environ.get("NOWCAST_VIEWER_PROBABILITY_SCREENSHOT"):  # the docs' picture, kept small
        image = Image.open(io.BytesIO(full)).convert("RGB")
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(
            os.environ["NOWCAST_VIEWER_PROBABILITY_SCREENSHOT"], optimize=True)

    # another threshold: asked for and drawn; never more likely than the lower one
    picker.select_by_value("5")
    wait_for(lambda: "≥ 5 mm/h" in page.find_element("id", "probability-legend").text, "the legend at 5 mm/h")
    wait_for(lambda: (p := panel(page, "steps:probability"))["kind"] == "probability" and p["loaded"],
             "the map at 5 mm/h", timeout=120)
    assert any(b.get("thresholds") == [5] and b["model"] == "steps" for b in asked(page))
    at_five = png_classes(panel(page, "steps:probability")["src"])
    assert (at_five[~init_nodata] <= drawn[~init_nodata]).all()  # P(>= 5) <= P(>= 1), class by class
    assert page.execute_script("return localStorage.getItem('nowcast.threshold')") == "5"

    # the probability forecasts the page asked for are kept for live verification, like its forecasts
    pending = httpx.get(f"{prob_viewer}/v1/skill", params={"product": "fmi"}, timeout=30).json()["pending"]
    assert {name.split("@")[0] for name in pending} == set(MODELS)

    # off: the maps and their legend go
    picker.select_by_value("off")
    wait_for(lambda: not page.find_elements("css selector", '#panels .panel[data-output="probability"]'),
             "the probability panels to go")
    assert not page.find_element("id", "probability-legend").is_displayed()
    errors = [e["message"] for e in page.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, errors
