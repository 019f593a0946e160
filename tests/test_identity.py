"""Model identity: every recorded forecast carries its name plus a fingerprint of its weights, so
two networks that share a name are never pooled in the live skill ledger (issue: numbers a user
can trust, item 1), and a trained model is found by the name it was given (item 3).

Real FMI radar, the small ConvLSTM trained by the conftest, real ``nowcast`` processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cropped_fmi, nowcast_cli
from test_model_store import dry_model

from nowcast.backfill import backfill, open_forecasts
from nowcast.forecaster import load_forecaster
from nowcast.live_verification import VerificationLedger
from pipelines.query import utc_text
from pipelines.store import ProductArchive

LEADS = 3


@pytest.fixture(scope="module")
def fmi_ten(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10 real FMI frames on a 320 x 320 window with rain (``cropped_fmi``): every test here runs the
    network for a few init times, whose cost on the full grid showed nothing identity needs."""
    return cropped_fmi(str(tmp_path_factory.mktemp("identity") / "fmi.zarr"), 10)


def copy_store(store: str, tmp_path: Path) -> str:
    """A private copy: each test's ledger starts empty."""
    target = tmp_path / "fmi.zarr"
    shutil.copytree(store, target)
    return str(target)


def test_the_fingerprint_follows_the_weights_not_the_file(small_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere.ckpt"
    shutil.copyfile(small_checkpoint, copy)
    one, same, other = (load_forecaster(str(p)) for p in (small_checkpoint, copy,
                                                          dry_model(small_checkpoint, tmp_path / "dry.ckpt")))
    assert one.name == other.name == "convlstm"  # the collision the ledger used to pool
    assert one.fingerprint == same.fingerprint != other.fingerprint
    assert one.identity.startswith("convlstm@") and one.identity != other.identity
    assert load_forecaster("persistence").identity == "persistence"


def test_two_networks_that_share_a_name_are_two_rows_of_the_ledger(
    fmi_ten: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    store = copy_store(fmi_ten, tmp_path)
    times = ProductArchive(store, "fmi").times()
    start, end = utc_text(times[3]), utc_text(times[6])
    dry = dry_model(small_checkpoint, tmp_path / "dry.ckpt")
    first = backfill(str(small_checkpoint), store, "fmi", start, end, str(tmp_path / "a.zarr"), workers=1)
    second = backfill(str(dry), store, "fmi", start, end, str(tmp_path / "b.zarr"), workers=1)
    assert first["model"] == second["model"] == "convlstm" and first["identity"] != second["identity"]
    rows = VerificationLedger(store, "fmi").rolling(24)["models"]
    assert len(rows) == 2, rows  # before: one "convlstm" row holding both models' cases
    assert {row["identity"] for row in rows} == {first["identity"], second["identity"]}
    assert all(row["n_cases"] == 4 for row in rows)  # each its own four cases, not eight pooled
    assert {row["model"] for row in rows} == {first["identity"], second["identity"]}  # shown apart
    with open_forecasts(tmp_path / "a.zarr") as ds:
        assert ds.attrs["model_identity"] == first["identity"] and len(ds.attrs["model_fingerprint"]) == 64


def test_a_resumed_backfill_refuses_other_weights_under_the_same_name(
    fmi_ten: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    store = copy_store(fmi_ten, tmp_path)
    times = ProductArchive(store, "fmi").times()
    out = str(tmp_path / "a.zarr")
    backfill(str(small_checkpoint), store, "fmi", utc_text(times[3]), utc_text(times[4]), out, workers=1, verify=False)
    with pytest.raises(ValueError, match="holds convlstm@"):
        backfill(str(dry_model(small_checkpoint, tmp_path / "dry.ckpt")), store, "fmi", utc_text(times[3]),
                 utc_text(times[4]), out, workers=1, verify=False)


def test_a_label_names_the_run_and_a_service_config_label_names_the_model(
    fmi_ten: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    store = copy_store(fmi_ten, tmp_path)
    times = ProductArchive(store, "fmi").times()
    window = ("--store", store, "--product", "fmi", "--start", utc_text(times[3]), "--end", utc_text(times[4]),
              "--workers", "1")
    labelled = nowcast_cli("backfill", "--model", str(small_checkpoint), "--label", "convlstm_rmi",
                           "--out", str(tmp_path / "a.zarr"), *window)
    assert labelled.returncode == 0, labelled.stderr
    assert "convlstm_rmi@" in labelled.stderr
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"models": ["persistence", f"convlstm_rmi={small_checkpoint}"]}))
    unknown = nowcast_cli("backfill", "--model", "convlstm_rmi", "--out", str(tmp_path / "b.zarr"), *window)
    assert unknown.returncode == 2 and "--service-config" in unknown.stderr and "Traceback" not in unknown.stderr
    by_name = nowcast_cli("backfill", "--model", "convlstm_rmi", "--service-config", str(config),
                          "--out", str(tmp_path / "b.zarr"), *window)
    assert by_name.returncode == 0, by_name.stderr
    with open_forecasts(tmp_path / "b.zarr") as ds:
        assert ds.attrs["model"] == "convlstm_rmi"
    rows = VerificationLedger(store, "fmi").rolling(24)["models"]
    assert [row["model"] for row in rows] == ["convlstm_rmi"]  # one model, asked by one name: one row


def test_a_model_store_version_is_a_name_for_evaluate(fmi_ten: str, small_checkpoint: Path, tmp_path: Path) -> None:
    from nowcast.model_store import ModelStore

    registry = ModelStore(tmp_path / "registry")
    version = registry.register(small_checkpoint)
    times = ProductArchive(fmi_ten, "fmi").times()
    result = nowcast_cli("evaluate", "--model", version, "--registry", str(registry.root), "--store", fmi_ten,
                         "--product", "fmi", "--start", utc_text(times[3]), "--end", utc_text(times[4]),
                         "--crop", "128", "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["models"]) == [version] and report["models"][version]["identity"].startswith(version + "@")


def test_the_service_records_its_forecasts_under_the_identity_it_lists(
    fmi_ten: str, small_checkpoint: Path, tmp_path: Path
) -> None:
    """The service's kept forecasts are scored under name@fingerprint, the identity GET /v1/models shows:
    the same weights served under another name, or other weights under this one, are other rows."""
    import time

    import httpx
    from test_service import start_server

    store = copy_store(fmi_ten, tmp_path)
    times = ProductArchive(store, "fmi").times()
    settings = {"store": store, "models": [f"mine={small_checkpoint}"], "verification_interval_s": 0.3}
    for url in start_server(tmp_path, settings):
        identity = httpx.get(f"{url}/v1/models").json()["models"][0]["identity"]
        assert identity == load_forecaster(str(small_checkpoint)).identity.replace("convlstm@", "mine@")
        body = {"model": "mine", "lead_steps": LEADS, "product": "fmi", "time": utc_text(times[3])}
        answer = httpx.post(f"{url}/v1/forecast", json=body, timeout=120)
        assert answer.status_code == 200 and answer.json()["identity"] == identity, answer.text[:500]
        deadline = time.monotonic() + 60
        while not (rows := httpx.get(f"{url}/v1/skill", params={"product": "fmi"}, timeout=30).json()["models"]):
            assert time.monotonic() < deadline, "the kept forecast was not verified within 60 s"
            time.sleep(0.3)
    assert [(row["model"], row["identity"]) for row in rows] == [("mine", identity)]
    assert rows[0]["n_cases"] + rows[0]["n_dry_cases_skipped"] == 1


def test_the_service_serves_a_model_store_version_by_its_name(fmi_ten: str, small_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    """A service config's ``models:`` may name a model store version (with ``registry``): served under
    that name, its version and identity (version@fingerprint) listed by GET /v1/models."""
    import httpx
    from test_service import start_server

    from nowcast.model_store import ModelStore

    registry = ModelStore(tmp_path / "registry")
    version = registry.register(small_checkpoint)
    settings = {"store": fmi_ten, "models": [version], "registry": str(registry.root), "verify_forecasts": False}
    for url in start_server(tmp_path, settings):
        [model] = httpx.get(f"{url}/v1/models").json()["models"]
    fingerprint = load_forecaster(str(small_checkpoint)).fingerprint
    assert (model["name"], model["version"]) == (version, version)
    assert model["identity"] == f"{version}@{fingerprint[:12]}" and model["fingerprint"] == fingerprint
