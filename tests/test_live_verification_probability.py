"""Live verification of probability forecasts (issue 28): a probabilistic model's probability forecasts
made from the archive are kept, scored once their leads are observed (Brier score and ROC area at 1, 5
and 10 mm/h, pysteps' probscores) and answered by GET /v1/skill in the rows of the deterministic scores,
equal to ``nowcast evaluate`` running the same model on the same case.

Real FMI radar (a 128 x 128 window, written into the archive frame by frame as if ingested), a real
``nowcast serve`` on loopback, ``steps`` and the shipped exceedance network."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import nowcast_cli, sample_files
from test_service import start_server

from nowcast.evaluate import evaluate
from pipelines.frame import Frame
from pipelines.grid import Grid
from pipelines.ingest import ingest
from pipelines.query import utc_text
from pipelines.store import ProductArchive

#: a real FMI window with rain and the edge of the radar's coverage (nodata) in it
ROWS, COLS = slice(256, 384), slice(576, 704)
PROBABILISTIC = ["steps", "convlstm_exceedance_taasrad19"]
LEADS, MEMBERS = 3, 4
KEYS = ["1.0", "5.0", "10.0"]


def cropped_frames(tmp: Path, count: int) -> list[Frame]:
    """The first ``count`` FMI frames of 28 Sep 2016 (from 14:45 UTC), cropped to the window."""
    full = str(tmp / "full.zarr")
    ingest(sample_files("fmi", count), full, "fmi", fmt="fmi_pgm", workers=1)
    archive = ProductArchive(full, "fmi")
    grid = archive.grid()
    crop = Grid(grid.crs_proj, grid.x[COLS], grid.y[ROWS])
    with archive.open() as ds:
        rain, times = ds["precip"].isel(y=ROWS, x=COLS).values, ds["time"].values
    return [Frame(time=t, rain_rate=r.astype(np.float32), grid=crop, attrs={"source_product": "fmi crop"},
                  source=f"fmi-crop:{k}") for k, (t, r) in enumerate(zip(times, rain, strict=True))]


def skill(url: str) -> dict:
    response = httpx.get(f"{url}/v1/skill", params={"product": "fmi"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def by_name(answer: dict) -> dict[str, dict]:
    return {m["model"]: m for m in answer["models"]}


def test_probability_forecasts_are_scored_like_evaluate(tmp_path: Path) -> None:
    frames = cropped_frames(tmp_path, 9)  # 14:45 .. 15:25
    store = str(tmp_path / "live.zarr")
    archive = ProductArchive(store, "fmi")
    archive.write(frames[:6])  # the service starts with 14:45 .. 15:10
    init = utc_text(frames[5].time)
    server = start_server(tmp_path, {"store": store, "models": ["persistence", *PROBABILISTIC], "max_lead_steps": 6,
                                     "default_members": MEMBERS, "verification_interval_s": 0.3})
    url = next(server)
    try:
        models = {m["name"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["models"]}
        for name in PROBABILISTIC:  # a probability forecast at a threshold verification does not score
            body = {"model": name, "product": "fmi", "lead_steps": LEADS, "output": "probability", "thresholds": [2]}
            response = httpx.post(f"{url}/v1/forecast", json=body, timeout=120)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["init_time"] == init and answer["thresholds"] == [2.0]  # answered what it asked
            assert np.array(answer["probabilities"], dtype=float).shape == (LEADS, 1, 128, 128)
        deterministic = {"model": "persistence", "product": "fmi", "lead_steps": LEADS}
        assert httpx.post(f"{url}/v1/forecast", json=deterministic, timeout=120).status_code == 200
        identities = {name: models[name]["identity"] for name in ["persistence", *PROBABILISTIC]}
        deadline = time.monotonic() + 30
        while skill(url)["pending"] != {identity: 1 for identity in identities.values()}:
            assert time.monotonic() < deadline, skill(url)
            time.sleep(0.3)

        archive.write(frames[6:9])  # the three leads are observed: the next pass scores them
        deadline = time.monotonic() + 90
        while True:
            rows = by_name(skill(url))
            if all(rows.get(name, {}).get("n_probabilistic_cases") == 1 for name in PROBABILISTIC) and \
                    rows.get("persistence", {}).get("n_cases") == 1:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.3)
        answer = skill(url)
        assert answer["pending"] == {}
        rows = by_name(answer)
        assert rows["persistence"]["n_probabilistic_cases"] == 0
        assert all(row["brier"] is None for row in rows["persistence"]["scores"])  # a deterministic model: none
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        server.close()

    for name in PROBABILISTIC:
        live = rows[name]
        # only probabilities were kept: one case, no deterministic score, leads of the probability forecast
        assert live["n_cases"] == 0 and live["n_probabilistic_cases"] == 1
        assert live["first_init"] == live["last_init"] == init
        assert [row["lead_minutes"] for row in live["scores"]] == [5.0, 10.0, 15.0]
        for row in live["scores"]:
            assert row["n_probabilistic_cases"] == 1 and row["crps"] is None  # no members kept: no CRPS
            assert list(row["brier"]) == KEYS and list(row["roc_area"]) == KEYS  # 1, 5, 10: not the asked 2
            assert row["csi"]["1.0"] is None and row["mae_mm_h"] is None
        # nowcast evaluate running the model on the same case gives the same Brier score and ROC area
        report = evaluate(store, "fmi", [name], tmp_path / f"{name}.json", lead_steps=LEADS, start=init, end=init,
                          members=MEMBERS)
        assert report["cases"] == [init]
        offline = report["models"][name]["probabilistic"]
        assert offline[0]["brier"]["1.0"] > 0.01  # rain at 1 mm/h to forecast
        for mine, theirs in zip(live["scores"], offline, strict=True):
            for key in KEYS:
                assert math.isclose(mine["brier"][key], theirs["brier"][key], rel_tol=1e-9, abs_tol=1e-12), (
                    name, mine["lead_minutes"], key, mine["brier"][key], theirs["brier"][key])
                assert (mine["roc_area"][key] is None) == (theirs["roc_area"][key] is None)
                assert theirs["roc_area"][key] is None or math.isclose(mine["roc_area"][key], theirs["roc_area"][key],
                                                                       rel_tol=1e-9)
        # the Prometheus gauge carries it too
        line = next(x for x in metrics.splitlines() if x.startswith("nowcast_skill_brier{")
                    and f'model="{name}"' in x and 'lead="5"' in x and 'threshold="1.0"' in x)
        assert float(line.split()[-1]) == pytest.approx(live["scores"][0]["brier"]["1.0"], rel=1e-12)

    # nowcast verify prints them beside the deterministic table
    verified = nowcast_cli("verify", "--store", store, "--product", "fmi")
    assert verified.returncode == 0, verified.stderr[-2000:]
    printed = verified.stdout + verified.stderr
    assert "BS ≥1" in printed and "| steps |" in printed, printed[-3000:]
