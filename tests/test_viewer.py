"""The viewer at GET /, driven in a real headless browser (Debian's chromium and chromedriver)
against ``nowcast serve`` on loopback over real FMI radar (issue 15).

The page must load with nothing but the service (no CDN), ask for the API key the service needs,
play its loops, change frames with the slider, draw rain where the archive has rain, and move to
a new init time by itself when a frame is ingested. Screenshots land in the test's tmp folder;
``NOWCAST_VIEWER_SCREENSHOT=path.png`` also saves the page there (docs/viewer.png is one).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import sample_files
from PIL import Image
from test_service import start_server

from pipelines.ingest import ingest
from pipelines.plots import RAIN_COLOURS
from pipelines.store import ProductArchive

KEY = "viewer-key"
#: FMI frames in the archive when the page opens (14:45 .. 15:45 UTC); the next one is ingested later
FIRST_FRAMES = 13
INSTALL = ("the viewer test needs Debian's chromium and its driver: apt-get install -y chromium chromium-driver "
           "(.ci/run installs them when missing)")


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


RAIN_RGB = np.stack([_hex(c) for c in RAIN_COLOURS])
NODATA_RGB = _hex("#d9d9d9")


def _rain_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels drawn in one of the scale's rain colours (a small tolerance for the PNG decoder)."""
    distance = np.abs(rgb[:, :, None, :].astype(np.int16) - RAIN_RGB[None, None]).max(axis=-1)
    return (distance <= 6).any(axis=-1)


def _blocks(mask: np.ndarray, n: int = 8) -> np.ndarray:
    """The share of True in each of n x n blocks: where on the map, independent of its pixel size."""
    rows = np.array_split(np.arange(mask.shape[0]), n)
    cols = np.array_split(np.arange(mask.shape[1]), n)
    return np.array([[mask[np.ix_(r, c)].mean() for c in cols] for r in rows])


#: init times of the forecasts kept before the service starts: it verifies them at once (skill panel)
VERIFIED_INITS = ("2016-09-28T15:00:00", "2016-09-28T15:10:00")


@pytest.fixture(scope="module")
def viewer_store(workdir: Path) -> str:
    """13 FMI frames, and persistence and optical-flow forecasts (6 leads) from two of them kept for
    verification, as the service keeps those it is asked for."""
    from nowcast.forecaster import load_forecaster
    from nowcast.live_verification import VerificationLedger

    store = str(workdir / "viewer.zarr")
    ingest(sample_files("fmi", FIRST_FRAMES), store, "fmi", fmt="fmi_pgm", workers=1)  # no pool to start: faster
    archive, ledger = ProductArchive(store, "fmi"), VerificationLedger(store, "fmi")
    for name in ("persistence", "optical_flow"):
        model = load_forecaster(name)
        for init in VERIFIED_INITS:
            window = archive.window(end=init, frames_needed=model.frames_needed)
            ledger.register(name, window.end, model.predict(window.frames, 6, window.step_minutes),
                            window.step_minutes)
    return store


@pytest.fixture(scope="module")
def viewer_server(workdir: Path, viewer_store: str) -> Iterator[str]:
    yield from start_server(workdir, {"store": viewer_store, "models": ["persistence", "optical_flow"],
                                      "api_keys": [KEY], "max_lead_steps": 12})


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(INSTALL)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1050", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def panel(driver: Any, name: str) -> dict:
    """What a panel shows: kind (observed/forecast/loading/missing/error), valid time, image src and size."""
    return driver.execute_script("""
        const p = document.querySelector(`#panels .panel[data-panel="${arguments[0]}"]`);
        if (!p) return null;
        const img = p.querySelector('img');
        return {kind: p.dataset.kind, time: p.dataset.time, src: img.getAttribute('src') || '',
                loaded: !img.hidden && img.complete && img.naturalWidth > 0, width: img.naturalWidth,
                text: p.querySelector('.placeholder').textContent};""", name)


def slider_value(driver: Any) -> int:
    return int(driver.find_element("id", "lead-slider").get_attribute("value"))


@pytest.fixture(scope="module")
def page(browser: Any, viewer_server: str) -> Any:
    """The page opened without a key (it must say it needs one), then given the key in its form."""
    browser.get(f"{viewer_server}/?poll=2&frame_ms=250")
    wait_for(lambda: browser.execute_script("return document.body.dataset.state") == "needs-key",
             "the page to ask for the API key")
    assert "needs an API key" in browser.find_element("id", "message").text
    field = browser.find_element("id", "api-key")
    field.send_keys(KEY)
    browser.find_element("css selector", "#key-form button").click()
    wait_for(lambda: (panel(browser, "observed") or {}).get("loaded"), "the latest observed frame")
    return browser


def test_the_page_shows_products_models_legend_and_the_latest_frame(page: Any, viewer_server: str) -> None:
    assert [o.text for o in page.find_elements("css selector", "#product option")] == ["fmi"]
    models = {i.get_attribute("value"): i.is_selected() for i in page.find_elements("css selector", "#models input")}
    assert models == {"persistence": True, "optical_flow": True}
    panels = [p.get_attribute("data-panel") for p in page.find_elements("css selector", "#panels .panel")]
    assert panels == ["observed", "persistence", "optical_flow"]
    observed = panel(page, "observed")
    assert observed["time"] == "2016-09-28T15:45:00Z" and observed["width"] == 760  # one pixel per grid cell
    assert "init 2016-09-28 15:45 UTC" in page.find_element("id", "lead-label").text
    assert "latest frame 2016-09-28 15:45 UTC" in page.find_element("id", "latest").text
    legend = page.find_element("id", "legend").text
    assert "rain rate (mm/h)" in legend and "no data" in legend and "0.1" in legend
    assert len(page.find_elements("css selector", "#panels .panel[data-panel=observed] svg polyline")) >= 5
    assert "60°N" in page.find_element("css selector", "#panels .panel[data-panel=observed] .labels").text
    # the skill panel: CSI at 1 mm/h against lead for both models, from the forecasts the service verified
    # (the service verifies them at start-up; the panel refreshes on each poll)
    wait_for(lambda: "(cases: optical_flow: 2, persistence: 2)" in page.find_element("id", "skill-body").text,
             "the skill chart of both models' 2 verified forecasts", timeout=30)
    lines = page.find_elements("css selector", "#skill-body svg polyline")
    assert sorted(line.get_attribute("data-model") for line in lines) == ["optical_flow", "persistence"]
    assert all(len(line.get_attribute("points").split()) == 6 for line in lines)  # one point per lead
    if os.environ.get("NOWCAST_VIEWER_SCREENSHOT"):  # the skill panel for the docs, beside the page's picture
        target = Path(os.environ["NOWCAST_VIEWER_SCREENSHOT"])
        section = page.find_element("id", "skill")
        page.execute_script("arguments[0].scrollIntoView()", section)
        panel_png = Image.open(io.BytesIO(section.screenshot_as_png)).convert("RGB")
        page.execute_script("window.scrollTo(0, 0)")
        panel_png.quantize(64, method=Image.Quantize.FASTOCTREE).save(
            target.with_name(f"{target.stem}_skill.png"), optimize=True)
    # offline: every resource the page loaded came from the service itself
    urls = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(viewer_server) or u.startswith(("blob:", "data:")) for u in urls), urls


def test_the_slider_changes_the_frame(page: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    slider = page.find_element("id", "lead-slider")
    before = panel(page, "observed")
    slider.send_keys(Keys.ARROW_LEFT)  # what a user does: one step back in time
    wait_for(lambda: panel(page, "observed")["time"] == "2016-09-28T15:40:00Z", "the slider to move 5 min back")
    after = wait_for(lambda: (p := panel(page, "observed"))["loaded"] and p, "the 15:40 frame")
    assert after["src"] != before["src"] and "lead -5 min" in page.find_element("id", "lead-label").text
    for _ in range(4):  # lead +15 min: the models' panels show their forecasts
        slider.send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: panel(page, "optical_flow")["kind"] == "forecast", "the optical-flow forecast", timeout=45)
    flow = panel(page, "optical_flow")
    assert flow["time"] == "2016-09-28T16:00:00Z" and flow["src"].startswith("data:image/png")
    wait_for(lambda: panel(page, "persistence")["kind"] == "forecast", "the persistence forecast", timeout=45)
    assert panel(page, "observed")["kind"] == "missing"  # 16:00 is not observed yet
    slider.send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: panel(page, "optical_flow")["time"] == "2016-09-28T16:05:00Z", "lead +20 min")
    assert panel(page, "optical_flow")["src"] != flow["src"]  # the flow moves the rain: another picture


def test_play_advances_the_loop_and_pause_stops_it(page: Any) -> None:
    play = page.find_element("id", "play")
    start = slider_value(page)
    times = set()
    play.click()
    assert play.get_attribute("aria-pressed") == "true"
    wait_for(lambda: times.add(panel(page, "observed")["time"]) or len(times) >= 4, "the loop to play 4 frames", 10)
    play.click()
    assert play.get_attribute("aria-pressed") == "false"
    stopped = slider_value(page)
    assert stopped != start or len(times) >= 4
    time.sleep(0.8)
    assert slider_value(page) == stopped, "the loop went on after pause"


def test_the_screenshot_shows_rain_where_the_archive_has_rain(page: Any, viewer_store: str, tmp_path: Path) -> None:
    page.execute_script("""const s = document.getElementById('lead-slider');
        s.value = String(Number(s.max) - 12); s.dispatchEvent(new Event('input'));""")  # lead 0: 15:45
    shown = wait_for(lambda: (p := panel(page, "observed"))["time"] == "2016-09-28T15:45:00Z" and p["loaded"] and p,
                     "the 15:45 frame")
    assert shown["kind"] == "observed"
    map_png = page.find_element("css selector", "#panels .panel[data-panel=observed] .map").screenshot_as_png
    (tmp_path / "observed.png").write_bytes(map_png)
    rgb = np.asarray(Image.open(io.BytesIO(map_png)).convert("RGB"))[2:-2, 2:-2]  # inside the border
    with ProductArchive(viewer_store, "fmi").open() as ds:
        field = ds["precip"].sel(time=np.datetime64("2016-09-28T15:45:00", "ns")).values
    archive_rain, screen_rain = field >= 0.1, _rain_mask(rgb)
    assert archive_rain.mean() > 0.05  # the case has rain to find
    assert 0.6 < screen_rain.mean() / archive_rain.mean() < 1.5, (screen_rain.mean(), archive_rain.mean())
    # and in the same places: the rain share of 8 x 8 blocks of the map agrees with the archive's
    expected, seen = _blocks(archive_rain), _blocks(screen_rain)
    assert np.corrcoef(expected.ravel(), seen.ravel())[0, 1] > 0.9
    grey = (np.abs(rgb.astype(np.int16) - NODATA_RGB).max(axis=-1) <= 3).mean()
    assert abs(grey - np.isnan(field).mean()) < 0.1, (grey, np.isnan(field).mean())  # nodata is grey
    white = (rgb.min(axis=-1) >= 250).mean()
    assert abs(white - ((field < 0.1) & ~np.isnan(field)).mean()) < 0.1  # dry is white
    # a chosen init time: the forecast from 15:30 beside what was observed at its lead times
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "init")).select_by_value("2016-09-28T15:30:00Z")
    page.execute_script("""const s = document.getElementById('lead-slider');
        s.value = String(Number(s.max) - 9); s.dispatchEvent(new Event('input'));""")  # lead +15 min: 15:45
    wait_for(lambda: (p := panel(page, "optical_flow"))["kind"] == "forecast" and p["loaded"],
             "the forecast from 15:30", timeout=45)
    assert panel(page, "optical_flow")["time"] == "2016-09-28T15:45:00Z"
    wait_for(lambda: (p := panel(page, "observed"))["kind"] == "observed" and p["loaded"], "the verifying frame")
    assert "init 2016-09-28 15:30 UTC" in page.find_element("id", "lead-label").text
    flow = page.find_element("css selector", "#panels .panel[data-panel=optical_flow] .map").screenshot_as_png
    (tmp_path / "optical_flow.png").write_bytes(flow)
    assert _rain_mask(np.asarray(Image.open(io.BytesIO(flow)).convert("RGB"))).mean() > 0.05
    full = page.get_screenshot_as_png()
    (tmp_path / "viewer.png").write_bytes(full)
    if os.environ.get("NOWCAST_VIEWER_SCREENSHOT"):  # the docs' picture, kept small
        image = Image.open(io.BytesIO(full)).convert("RGB")
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(os.environ["NOWCAST_VIEWER_SCREENSHOT"],
                                                                   optimize=True)


def test_a_new_frame_moves_the_latest_loop_by_itself(page: Any, viewer_store: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "init")).select_by_value("latest")
    assert page.execute_script("return document.body.dataset.lastTime") == "2016-09-28T15:45:00Z"
    ingest(sample_files("fmi", FIRST_FRAMES + 1)[FIRST_FRAMES:], viewer_store, "fmi", fmt="fmi_pgm", workers=1)
    wait_for(lambda: page.execute_script("return document.body.dataset.lastTime") == "2016-09-28T15:50:00Z",
             "the page to notice the 15:50 frame", timeout=20)
    assert "init 2016-09-28 15:50 UTC" in page.find_element("id", "lead-label").text
    options = page.find_elements("css selector", "#init option")
    assert "2016-09-28T15:50:00Z" in [o.get_attribute("value") for o in options]
    page.execute_script("""const s = document.getElementById('lead-slider');
        s.value = String(Number(s.max) - 12); s.dispatchEvent(new Event('input'));""")
    wait_for(lambda: (p := panel(page, "observed"))["time"] == "2016-09-28T15:50:00Z" and p["loaded"],
             "the new frame in the observed loop")
    page.execute_script("""const s = document.getElementById('lead-slider');
        s.value = String(Number(s.max) - 11); s.dispatchEvent(new Event('input'));""")  # lead +5 from 15:50
    wait_for(lambda: (p := panel(page, "optical_flow"))["time"] == "2016-09-28T15:55:00Z" and p["kind"] == "forecast",
             "the optical-flow forecast from the new init time", timeout=45)
    errors = [e["message"] for e in page.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, errors  # no script errors (a 401 or 404 the page expects is not one)
