"""Live verification (issue 15): forecasts made from the archive are scored as their leads are
ingested, kept in the store across restarts and kills, and agree with ``nowcast evaluate``.

Real MeteoSwiss radar, a real ``nowcast serve`` on loopback, real ``nowcast verify`` processes
killed with SIGKILL."""

from __future__ import annotations

import inspect
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import kill_9_when, nowcast_cli, nowcast_in_process, sample_files
from test_service import start_server

from nowcast.backfill import backfill
from nowcast.evaluate import evaluate
from nowcast.forecaster import load_forecaster
from nowcast.live_verification import VerificationLedger
from nowcast.score_forecasts import evaluate_forecasts
from nowcast.verification import LeadTimeVerifier
from pipelines.ingest import ingest
from pipelines.query import utc_text
from pipelines.store import ProductArchive

MODELS = ["persistence", "optical_flow"]
LEADS = 3


def same_scores(live: list[dict], offline: list[dict]) -> None:
    """Pooled counts equal exactly; MAE and FSS to float rounding (sums added in another order)."""
    assert len(live) == len(offline)
    for a, b in zip(live, offline, strict=True):
        for key in ("lead_minutes", "n_cases", "hits", "misses", "false_alarms"):
            assert a[key] == b[key], (key, a[key], b[key])
        for key in ("csi", "pod", "far"):
            for threshold, value in b[key].items():
                assert (a[key][threshold] is None) == (value is None)
                assert value is None or math.isclose(a[key][threshold], value, rel_tol=1e-12), (key, threshold)
        for key in ("mae_mm_h", "fss_1mm_10km"):
            assert math.isclose(a[key], b[key], rel_tol=1e-9), (key, a[key], b[key])


def same_models(live: list[dict], expected: list[dict]) -> None:
    """The same models, cases and scores (records are pooled in the order the store lists them)."""
    assert [{k: v for k, v in m.items() if k != "scores"} for m in live] == [
        {k: v for k, v in m.items() if k != "scores"} for m in expected]
    for a, b in zip(live, expected, strict=True):
        same_scores(a["scores"], b["scores"])


def same_rolling(live: dict, expected: dict) -> None:
    """Two rolling answers with the same window, pending forecasts, cases and scores."""
    assert {k: v for k, v in live.items() if k != "models"} == {k: v for k, v in expected.items() if k != "models"}
    same_models(live["models"], expected["models"])


def skill(url: str, **params: object) -> httpx.Response:
    return httpx.get(f"{url}/v1/skill", params={"product": "mch", **params}, timeout=30)


def wait_for_cases(url: str, cases: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = skill(url).json()
        counts = {m["model"]: m["n_cases"] for m in body["models"]}
        if all(counts.get(model) == cases for model in MODELS):
            return body
        assert time.monotonic() < deadline, f"waited {timeout} s for {cases} verified cases per model: {body}"
        time.sleep(0.3)


def forecast(url: str, model: str, time_: str | None = None) -> None:
    body = {"model": model, "product": "mch", "lead_steps": LEADS, **({"time": time_} if time_ else {})}
    response = httpx.post(f"{url}/v1/forecast", json=body, timeout=120)
    assert response.status_code == 200, response.text


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Path, dict]]:
    """An archive of 4 MeteoSwiss frames; ``start()`` serves it (again after a restart)."""
    store = tmp_path / "live.zarr"
    ingest(sample_files("mch", 4), str(store), "mch", fmt="mch_gif", workers=1)
    settings = {"store": str(store), "models": MODELS, "verification_interval_s": 0.3}
    yield str(store), tmp_path, settings


def test_scores_of_forecasts_asked_for_while_frames_arrive_equal_evaluate(service) -> None:
    store, tmp, settings = service
    files = sample_files("mch", 10)
    server = start_server(tmp, settings)
    url = next(server)
    try:
        assert skill(url).json()["models"] == []  # nothing verified yet: an empty answer, not an error
        for new_frame in files[4:8]:  # forecasts from the latest frame, then one more frame comes in
            for model in MODELS:
                forecast(url, model)
            ingest([new_frame], store, "mch", fmt="mch_gif", workers=1)
        first = wait_for_cases(url, 2)  # frames 4 and 5 have their 3 leads; 6 and 7 wait for frames 9 and 10
        assert first["pending"] == {model: 2 for model in MODELS}
        times = ProductArchive(store, "mch").times()
        report = evaluate(store, "mch", MODELS, tmp / "evaluate.json", lead_steps=LEADS, start=utc_text(times[3]))
        assert report["n_cases"] == 2 and report["n_dry_cases_skipped"] == 0
        for entry in first["models"]:
            same_scores(entry["scores"], report["models"][entry["model"]]["scores"])
            assert entry["first_init"] == utc_text(times[3]) and entry["last_init"] == utc_text(times[4])
        # the Prometheus gauges carry the same numbers
        metrics = httpx.get(f"{url}/metrics").text
        flow = next(m for m in first["models"] if m["model"] == "optical_flow")["scores"]
        line = next(x for x in metrics.splitlines() if x.startswith("nowcast_skill_csi{")
                    and 'model="optical_flow"' in x and 'lead="10"' in x and 'threshold="1.0"' in x)
        assert math.isclose(float(line.split()[-1]), flow[1]["csi"]["1.0"], rel_tol=1e-12)
        assert 'nowcast_skill_cases{lead="15",model="persistence",product="mch"} 2.0' in metrics
        # hostile or wrong queries: clear errors, small bodies
        for params, status, word in [({"hours": 0}, 422, "hours"), ({"hours": "a day"}, 422, "hours"),
                                     ({"end": "1800-01-01T00:00:00Z"}, 422, "1800"),
                                     ({"product": "opera"}, 404, "opera"), ({"product": "../x"}, 422, "product")]:
            answer = skill(url, **params)
            assert answer.status_code == status and word in answer.text and len(answer.content) < 2000, answer.text
        assert httpx.get(f"{url}/v1/skill", timeout=10).status_code == 422  # product is required
        window = skill(url, hours=0.25).json()  # (newest - 15 min, newest]: after the last scored init
        assert window["start"] == utc_text(times[-1] - np.timedelta64(15, "m"))
        assert all(m["n_cases"] == 0 for m in window["models"]) or not window["models"]
    finally:
        server.close()

    # a restart loses nothing and counts nothing twice: the same forecasts asked again, two more frames
    server = start_server(tmp, settings)
    url = next(server)
    try:
        again = wait_for_cases(url, 2)
        same_models(again["models"], first["models"])
        forecast(url, "persistence", utc_text(times[4]))
        forecast(url, "optical_flow", utc_text(times[5]))
        ingest(files[8:10], store, "mch", fmt="mch_gif", workers=1)
        final = wait_for_cases(url, 4)  # the two forecasts kept before the restart are scored now
        assert final["pending"] == {}
        report = evaluate(store, "mch", ["persistence"], tmp / "evaluate6.json", lead_steps=LEADS,
                          start=utc_text(times[3]), end=utc_text(times[6]))
        assert report["n_cases"] == 4
        same_scores(next(m for m in final["models"] if m["model"] == "persistence")["scores"],
                    report["models"]["persistence"]["scores"])
        metrics = httpx.get(f"{url}/metrics").text
        assert 'nowcast_verified_forecasts_total{model="persistence",outcome="scored",product="mch"} 2.0' in metrics
    finally:
        server.close()


def _records(store: str) -> int:
    root = Path(store) / "_verification" / "mch" / "scores"
    return sum(1 for p in root.glob("*/*/*/zarr.json")) if root.exists() else 0


def test_a_verification_pass_killed_at_many_points_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    store = str(tmp_path / "kill.zarr")
    ingest(sample_files("mch", 16), store, "mch", fmt="mch_gif", workers=1)
    archive, ledger = ProductArchive(store, "mch"), VerificationLedger(store, "mch")
    persistence = load_forecaster("persistence")
    times = archive.times()
    for k in range(len(times)):  # persistence from every frame, kept under two names: 32 forecasts
        window = archive.window(length=1, end=times[k])
        for name in ("persistence", "persistence_again"):
            assert ledger.register(name, times[k], persistence.predict(window.frames, LEADS, 5.0), 5.0)
    assert not ledger.register("persistence", times[0], np.zeros((2, 640, 710), np.float32), 5.0)  # already held
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    VerificationLedger(str(reference), "mch").verify()
    expected = VerificationLedger(str(reference), "mch").rolling(24)
    assert [m["n_cases"] for m in expected["models"]] == [13, 13] and expected["pending"] == {
        "persistence": 3, "persistence_again": 3}

    for after in (1, 10, 19):  # SIGKILL once this many records are written
        proc = subprocess.Popen([str(Path(sys.executable).with_name("nowcast")), "verify", "--store", store],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_9_when(proc, lambda n=after: _records(store) >= n, f"nowcast verify up to {after} records")
        assert proc.returncode == -9
        assert VerificationLedger(store, "mch").rolling(24)["end"] == expected["end"]  # readable after each kill
    # the pass that completes them, never killed: the same command in this process
    done = nowcast_in_process("verify", "--store", store, "--out", str(tmp_path / "skill.json"))
    assert done.returncode == 0, done.stderr
    assert "mch: " in done.stderr and "CSI" in done.stderr
    same_rolling(VerificationLedger(store, "mch").rolling(24), expected)
    assert (tmp_path / "skill.json").read_text().count('"n_cases"') > 0


def test_a_backfill_is_verified_as_its_observations_come_in(tmp_path: Path) -> None:
    store = str(tmp_path / "backfill.zarr")
    files = sample_files("mch", 12)
    ingest(files[:9], store, "mch", fmt="mch_gif", workers=1)
    times = ProductArchive(store, "mch").times()
    out = str(tmp_path / "persistence.zarr")
    summary = backfill("persistence", store, "mch", utc_text(times[2]), utc_text(times[8]), out,
                       lead_steps=LEADS, workers=1)
    assert summary["verification"] == {"scored": 4, "dry": 0, "waiting": 3, "missing_observations": 0}
    ingest(files[9:], store, "mch", fmt="mch_gif", workers=1)
    verified = nowcast_cli("verify", "--store", store, "--product", "mch")
    assert verified.returncode == 0 and "mch: 3 scored, 0 dry, 0 awaiting" in verified.stderr, verified.stderr
    live = VerificationLedger(store, "mch").rolling(24)["models"]
    report = evaluate_forecasts(store, [out], tmp_path / "stored.json")
    assert report["n_cases"] == 7 and [m["n_cases"] for m in live] == [7]
    same_scores(live[0]["scores"], report["models"]["persistence"]["scores"])
    again = nowcast_in_process("verify", "--store", store)  # nothing new: nothing counted twice
    assert "mch: 0 scored" in again.stderr
    same_scores(VerificationLedger(store, "mch").rolling(24)["models"][0]["scores"], live[0]["scores"])


def test_a_forecast_whose_observations_never_come_is_given_up_after_the_grace(tmp_path: Path) -> None:
    store = str(tmp_path / "gap.zarr")
    files = sample_files("mch", 12)
    ingest(files[:5] + files[6:9], store, "mch", fmt="mch_gif", workers=1)  # no frame 6 (index 5)
    times = ProductArchive(store, "mch").times()
    frames = ProductArchive(store, "mch").window(length=1, end=times[4]).frames
    ledger = VerificationLedger(store, "mch", grace_minutes=10)
    ledger.register("persistence", times[4], np.repeat(frames[-1:], LEADS, axis=0), 5.0)  # needs the missing frame
    assert ledger.verify().waiting == 1  # newest = init + 20 min: inside last lead (+15) + grace (10)
    ingest(files[9:11], store, "mch", fmt="mch_gif", workers=1)  # newest = init + 30 min: past it
    assert ledger.verify().missing_observations == 1
    answer = ledger.rolling(24)
    assert answer["pending"] == {} and answer["models"][0]["n_missing_observations"] == 1
    assert answer["models"][0]["n_cases"] == 0 and answer["models"][0]["scores"] == []


def test_records_scored_with_other_thresholds_are_counted_apart_not_pooled(tmp_path: Path) -> None:
    store = str(tmp_path / "old.zarr")
    ingest(sample_files("mch", 6), store, "mch", fmt="mch_gif", workers=1)
    archive = ProductArchive(store, "mch")
    times = archive.times()
    ledger = VerificationLedger(store, "mch")
    for init in times[1:3]:
        frames = archive.window(length=1, end=init).frames
        ledger.register("persistence", init, np.repeat(frames[-1:], LEADS, axis=0), 5.0)
    assert ledger.verify().scored == 2
    both = ledger.rolling(24)["models"][0]
    # the older record as a release with other thresholds would have kept it
    old = ledger._record("persistence", times[1])
    old["sums"] = {**old["sums"], "thresholds": [0.3, 3.0]}
    ledger._write_record("persistence", times[1], old)
    answer = ledger.rolling(24)["models"][0]
    assert (answer["n_cases"], answer["n_other_settings"]) == (1, 1)
    assert [lead["n_cases"] for lead in answer["scores"]] == [1] * LEADS
    newer = LeadTimeVerifier.like(ledger._record("persistence", times[2])["sums"], LEADS)
    newer.merge_state(ledger._record("persistence", times[2])["sums"])
    same_scores(answer["scores"], newer.result())  # the newer record's scores alone
    assert both["n_cases"] == 2 and both["n_other_settings"] == 0


def test_forecasts_waiting_to_be_kept_are_bounded_and_the_overflow_is_counted(tmp_path: Path) -> None:
    """A burst of archive forecasts faster than the store takes them: at most MAX_QUEUED_KEEPS wait
    (each holds a whole forecast in memory); the rest are dropped, counted, and never block."""
    import asyncio

    from service.live_verification import MAX_QUEUED_KEEPS, LiveVerification
    from service.metrics import Metrics
    from service.settings import ServiceSettings

    store = str(tmp_path / "burst.zarr")
    metrics = Metrics()
    live = LiveVerification(ServiceSettings(store=store, models=["persistence"]), metrics)
    forecast = np.ones((LEADS, 640, 710), np.float32)
    inits = np.datetime64("2016-07-11T12:00:00") + np.arange(20) * np.timedelta64(5, "m")

    async def burst() -> None:
        for init in inits:
            live.keep_soon("mch", "persistence", init, forecast, 5.0)
        await live.drain()

    asyncio.run(burst())
    dropped = metrics.registry.get_sample_value("nowcast_verification_errors_total", {"stage": "keep_dropped"})
    assert dropped == len(inits) - MAX_QUEUED_KEEPS
    assert VerificationLedger(store, "mch").pending_count() == {"persistence": MAX_QUEUED_KEEPS}


def keep_every_frame(store: str, name: str, leads: int) -> None:
    """A persistence forecast from every frame of the archive, kept in its ledger under ``name``."""
    import numpy as np

    from nowcast.live_verification import VerificationLedger
    from pipelines.store import ProductArchive

    archive, ledger = ProductArchive(store, "mch"), VerificationLedger(store, "mch")
    for init in archive.times():
        last = archive.window(length=1, end=init).frames
        ledger.register(name, init, np.repeat(last, leads, axis=0), 5.0)


#: ``keep_every_frame`` as a process of its own, to be killed: the same code, not a copy of it
KEEP_EVERY_FRAME = (inspect.getsource(keep_every_frame)
                    + "\nimport sys\nkeep_every_frame(sys.argv[1], sys.argv[2], int(sys.argv[3]))\n")


def test_a_kill_while_forecasts_are_kept_never_scores_half_a_forecast(tmp_path: Path) -> None:
    """Persistence forecasts kept under two names: one by a process killed twice mid-way (then
    kept again), one whole. Both must end with the same scores: no half-written forecast scored."""
    store = str(tmp_path / "keep.zarr")
    ingest(sample_files("mch", 10), store, "mch", fmt="mch_gif", workers=1)
    keep = [sys.executable, "-c", KEEP_EVERY_FRAME, store]
    keep_every_frame(store, "whole", LEADS)  # never killed: in this process
    pending = Path(store) / "_verification" / "mch" / "pending" / "killed"
    for after in (2, 5):  # SIGKILL once this many forecasts have started to be written
        proc = subprocess.Popen([*keep, "killed", str(LEADS)])
        kill_9_when(proc, lambda n=after: len(list(pending.glob("*/zarr.json"))) >= n, f"keeping {after} forecasts")
        assert proc.returncode == -9
        VerificationLedger(store, "mch").verify()  # a pass between kills reads only whole forecasts
    keep_every_frame(store, "killed", LEADS)  # kept again: the rest, and any left half-written
    VerificationLedger(store, "mch").verify()
    models = VerificationLedger(store, "mch").rolling(24)["models"]
    assert [m["model"] for m in models] == ["killed", "whole"] and models[0]["n_cases"] == models[1]["n_cases"] == 7
    same_scores(models[0]["scores"], models[1]["scores"])
