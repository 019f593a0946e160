"""Model registry, promotion by verification, and the training lock."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import torch
from conftest import REPO, nowcast_cli, synthetic_training_config, train_command

from nowcast.model_store import LOCKED, ModelStore
from nowcast.promotion import KEPT_PRODUCTION, PROMOTED


def dry_model(checkpoint: Path, out: Path) -> Path:
    """The same network with its output layer zeroed: it forecasts no rain at all."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in list(state["state_dict"]):
        if key.startswith("net.output."):
            state["state_dict"][key] = torch.zeros_like(state["state_dict"][key])
    torch.save(state, out)
    return out


RULE = REPO / "configs" / "promotion.yaml"


def promote(registry: Path, checkpoint: Path, store: str) -> tuple[int, dict]:
    result = nowcast_cli("promote", "--checkpoint", str(checkpoint), "--registry", str(registry), "--store", store,
                         "--product", "fmi", "--rule", str(RULE), "--window-hours", "1", "--crop", "256")
    decision = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, decision


def test_promotion_moves_the_pointer_only_for_a_better_model(
    fmi_archive: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    registry_dir = tmp_path / "registry"
    dry = dry_model(small_checkpoint, tmp_path / "dry.ckpt")
    code, first = promote(registry_dir, dry, fmi_archive)
    assert code == PROMOTED and first["reason"] == "no production model" and first["cases"] > 0
    registry = ModelStore(registry_dir)
    assert registry.production() == first["candidate"]
    code, second = promote(registry_dir, small_checkpoint, fmi_archive)
    assert code == PROMOTED and second["candidate_score"] > second["production_score"] == 0.0
    assert registry.production() == second["candidate"]
    code, third = promote(registry_dir, dry, fmi_archive)
    assert code == KEPT_PRODUCTION and third["reason"] == "not better than production"
    assert registry.production() == second["candidate"]
    assert len(registry.list()) == 3
    meta = registry.meta(third["candidate"])
    assert meta["promotion"]["promoted"] is False and meta["scores"][0]["lead_minutes"] == 5.0
    assert meta["training_data"]["products"] == ["synth"] and meta["config"]["model"]["model"] == "convlstm"


def test_training_is_locked_against_a_second_run(tmp_path: Path) -> None:
    registry = ModelStore(tmp_path / "registry")
    with registry.lock():
        result = nowcast_cli("train", "--config", str(REPO / "configs" / "convlstm.yaml"), "--registry",
                             str(tmp_path / "registry"))
    assert result.returncode == LOCKED and "holds" in result.stderr


def test_train_then_promote_from_the_command_line(tmp_path: Path) -> None:
    overrides = synthetic_training_config(tmp_path)
    # a test block in the split: promotion verifies on the cases the run never trained or validated on
    command = train_command(overrides, extra=("--data.split_pattern", "[train,val,test]", "--registry",
                                              str(tmp_path / "registry"), "--promote", "--rule", str(RULE),
                                              "--window-hours", "3"))
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == PROMOTED, result.stderr[-3000:]
    assert f"last checkpoint: {tmp_path / 'ckpt' / 'last.ckpt'}" in result.stdout  # where training saved
    registry = ModelStore(tmp_path / "registry")
    assert registry.production() and registry.production_checkpoint().is_file()


def test_service_follows_the_production_pointer_without_dropping_requests(
    fmi_archive: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import threading
    import time

    import httpx
    from test_service import start_server

    registry = ModelStore(tmp_path / "registry")
    first = registry.register(dry_model(small_checkpoint, tmp_path / "dry.ckpt"))
    registry.set_production(first)
    server = start_server(tmp_path, {"store": fmi_archive, "models": ["persistence"], "registry": str(registry.root),
                                     "reload_interval_s": 0.3})
    url = next(server)
    stop = threading.Event()
    thread = threading.Thread()
    try:
        def version() -> str:
            models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
            return models["production"]["version"]

        assert version() == first
        statuses: list[int] = []
        body = {"model": "production", "lead_steps": 2, "product": "fmi", "bbox": [200_000, 400_000, 263_999, 463_999]}

        def hammer() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    statuses.append(client.post(f"{url}/v1/forecast", json=body).status_code)

        def answered(more: int) -> None:
            """Wait for ``more`` further answers (events, not a time window: a loaded machine is slow)."""
            target, deadline = len(statuses) + more, time.monotonic() + 120
            while len(statuses) < target:
                assert thread.is_alive() and time.monotonic() < deadline, f"no answers: {statuses}"
                time.sleep(0.05)

        thread = threading.Thread(target=hammer)
        thread.start()
        answered(2)  # requests in flight on the first model
        second = registry.register(small_checkpoint)
        registry.set_production(second)
        deadline = time.monotonic() + 20
        while version() != second:
            assert time.monotonic() < deadline, "the service did not pick up the new production model"
            time.sleep(0.1)
        def reloads() -> float:
            text = httpx.get(f"{url}/metrics").text
            return float(re.search(r"^nowcast_model_reloads_total (\S+)$", text, re.MULTILINE).group(1))

        before = reloads()
        pid = int(subprocess.run(["pgrep", "-f", "--", f"--port {url.rsplit(':', 1)[1]}"], capture_output=True,
                                 text=True).stdout.split()[0])
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while reloads() <= before:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        answered(2)  # and on the reloaded one
        stop.set()
        thread.join()
        # every request answered, and answered 200: none dropped across the pointer move and the reload
        assert len(statuses) >= 4 and set(statuses) == {200}, statuses
    finally:
        stop.set()
        thread.join()
        next(server, None)


def test_a_request_that_picked_a_replaced_model_is_answered_by_its_successor() -> None:
    """The race a reload opens: a request picks the production model, reads its frames, and submits
    only after the reload drained and stopped that model. It must be answered, not left to time out."""
    import asyncio

    import numpy as np

    from nowcast.forecaster import load_forecaster
    from service.batching import MicroBatcher, Retired
    from service.metrics import Metrics

    async def scenario() -> tuple[str, str, np.ndarray]:
        metrics = Metrics()
        old = MicroBatcher("production", load_forecaster("persistence"), metrics, max_batch=4, wait_ms=0)
        new = MicroBatcher("production", load_forecaster("persistence"), metrics, max_batch=4, wait_ms=0)
        old.start()
        new.start()
        frames = np.random.default_rng(0).gamma(1.0, 2.0, (4, 16, 16)).astype("float32")
        await old.drain_and_stop(quiet_s=0.0)  # the reload finished with the old model
        try:
            await old.submit(frames, 2, timeout_s=30)
            late = "answered by a stopped model"
        except Retired as exc:
            late = str(exc)
        # a job already queued when a model is stopped hard is handed Retired too, not a timeout
        queued = MicroBatcher("production", load_forecaster("persistence"), metrics, max_batch=4, wait_ms=0)
        queued.start()
        queued._task.cancel()  # the worker is gone: the job below can only be answered by stop()
        waiting = asyncio.create_task(queued.submit(frames, 2, timeout_s=30))
        await asyncio.sleep(0.05)
        await queued.stop()
        try:
            await waiting
            stuck = "answered"
        except Retired as exc:
            stuck = str(exc)
        answer = await new.submit(frames, 2, timeout_s=30)
        await new.stop()
        return late, stuck, answer

    late, stuck, answer = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "not serving" in late
    assert "replaced" in stuck
    assert answer.shape == (2, 16, 16)
