"""The weights that ship in the package: every one loads by name and forecasts radar it never saw.

The MeteoSwiss event of 11 July 2016 is a test event: no shipped model trained or validated on
it (nowcast/weights/MODEL_CARD.md).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import REPO, sample_files

from nowcast.forecaster import load_forecaster, shipped_models
from nowcast.shipping import SHIPPED
from nowcast.verification import LeadTimeVerifier


@cache
def unseen_radar() -> np.ndarray:
    """MeteoSwiss 2016-07-11 (a test event) in mm/h, [T, 640, 710], NaN outside the composite."""
    from pipelines.ingest import decode

    return np.stack([decode(path, "mch_gif").rain_rate for path in sample_files("mch", 20)]).astype(np.float32)


def test_every_model_the_card_lists_ships() -> None:
    assert set(shipped_models()) == set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_and_forecasts_an_odd_sized_unseen_grid(name: str) -> None:
    radar = unseen_radar()
    frames = radar[4:8, 200:403, 300:481].copy()  # 203 x 181: no multiple of the patch size
    frames[:, :, :15] = np.nan  # a strip outside the coverage
    forecaster = load_forecaster(name)
    assert forecaster.source.endswith(f"weights/{name}.ckpt") and forecaster.step_minutes == 5
    forecast = forecaster.predict(frames, 12)
    covered = np.isfinite(frames[-1])
    assert forecast.shape == (12, 203, 181)
    assert np.isnan(forecast[:, ~covered]).all(), "outside the last frame's coverage the forecast is nodata"
    assert np.isfinite(forecast[:, covered]).all() and (forecast[:, covered] >= 0).all()
    assert forecast[:, covered].max() < 300  # no runaway intensities


#: where the unseen event rains most: a 320 x 320 window of it (the whole 640 x 710 grid took S-PROG, in the best
#: network, four times as long, and the margin over persistence was as wide: CSI 0.72 vs 0.38 there, 0.74 vs 0.43 here)
RAIN_WINDOW = (slice(128, 448), slice(200, 520))


def test_best_shipped_model_beats_persistence_on_an_unseen_event() -> None:
    radar = unseen_radar()[(slice(None), *RAIN_WINDOW)]
    best = load_forecaster(shipped_models()[0])
    persistence = load_forecaster("persistence")
    scores = {}
    for label, forecaster in (("best", best), ("persistence", persistence)):
        verifier = LeadTimeVerifier(6, 5.0, 1.0, thresholds=(1.0,))
        for init in (5, 9, 13):
            verifier.accumulate(forecaster.predict(radar[init - 3 : init + 1], 6), radar[init + 1 : init + 7])
        result = verifier.result()
        scores[label] = np.mean([lead["csi"]["1.0"] for lead in result])
    assert scores["best"] > scores["persistence"] + 0.02, scores


def test_bf16_autocast_forecasts_like_float32_and_an_unknown_precision_is_refused() -> None:
    """bf16 is emulated on CPUs without AVX-512 BF16 (slow), so a small crop; nodata stays nodata."""
    frames = unseen_radar()[4:8, 300:364, 400:464].copy()
    frames[:, :, :8] = np.nan
    name = shipped_models()[0]
    full, half = load_forecaster(name), load_forecaster(name, precision="bf16")
    assert half.precision == "bf16"
    reference, forecast = full.predict(frames, 6), half.predict(frames, 6)
    assert forecast.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(forecast), np.isnan(reference))
    covered = np.isfinite(reference)
    assert (forecast[covered] >= 0).all()
    assert not np.array_equal(forecast[covered], reference[covered]), "autocast changed nothing: not applied"
    # bfloat16 keeps 8 bits of mantissa: the rain rates agree to a few per cent of the field's mean
    assert np.abs(forecast[covered] - reference[covered]).mean() < 0.05 * reference[covered].mean() + 0.01
    with pytest.raises(ValueError, match="precision must be one of 32, bf16"):
        load_forecaster(name, precision="fp16")


def test_linear_interpolation_in_time_is_exact_on_linear_rain() -> None:
    from pipelines.time_interpolation import interpolate_in_time

    frames = np.arange(4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 2, 2), np.float32) * 10
    # frames at -30, -20, -10, 0 min holding 0, 10, 20, 30 mm/h
    at = interpolate_in_time(frames, 10.0, np.array([-15.0, -5.0, 0.0]), method="linear")
    np.testing.assert_allclose(at[0, :, 0, 0], [15.0, 25.0, 30.0])
    with pytest.raises(ValueError, match="outside"):
        interpolate_in_time(frames, 10.0, np.array([-45.0]), method="linear")


def test_a_ten_minute_product_is_resampled_in_time_not_refused() -> None:
    radar = unseen_radar()[(slice(None), *RAIN_WINDOW)]
    ten_minutes = radar[1::2]  # the same event as a 10-minute product
    forecaster = load_forecaster(shipped_models()[0])
    assert forecaster.frames_needed(10.0) == 3 and forecaster.frames_needed(2.0) == 9
    verifiers = {}
    for label in ("network", "persistence"):
        verifiers[label] = LeadTimeVerifier(3, 10.0, 1.0, thresholds=(1.0,))
        model = forecaster if label == "network" else load_forecaster("persistence")
        for init in (3, 5):
            forecast = model.predict(ten_minutes[init - 2 : init + 1], 3, step_minutes=10.0)
            assert forecast.shape == (3, *radar.shape[1:])
            assert np.isnan(forecast[:, np.isnan(ten_minutes[init])]).all()
            verifiers[label].accumulate(forecast, ten_minutes[init + 1 : init + 4])
    csi = {k: np.mean([r["csi"]["1.0"] for r in v.result()]) for k, v in verifiers.items()}
    assert csi["network"] > csi["persistence"] + 0.02, csi


def test_the_service_serves_every_shipped_model_by_default_and_with_its_config_file() -> None:
    from service.settings import ServiceSettings, load_settings

    assert set(SHIPPED) <= set(ServiceSettings().models)
    assert {"persistence", "optical_flow", "sprog"} <= set(ServiceSettings().models)  # the bar beside them
    # docker-compose serves with configs/service.yaml: its "shipped" entry stands for the weights
    served = load_settings(REPO / "configs" / "service.yaml").models
    assert served == ["persistence", "optical_flow", "sprog", *SHIPPED]
    assert ServiceSettings(models=["shipped", SHIPPED[0], "sprog"]).models == [*SHIPPED[1:], SHIPPED[0], "sprog"]


def test_a_registered_network_without_weights_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import nowcast.forecaster

    monkeypatch.setattr(nowcast.forecaster, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no shipped weights for 'predrnn'"):
        load_forecaster("predrnn")


def _fake_stage(run_dir, config_dir, stage: str, monitor: str | None, best_epoch: int,
                csi_by_lead: list[float]) -> None:
    """A stage as `nowcast train` leaves it: config, CSV log of each validation, best/last checkpoints
    (``monitor`` None: a fixed-budget stage, whose config keeps only the last epoch)."""
    import torch
    import yaml

    checkpoint = {"monitor": monitor} if monitor else {"filename": "last"}
    (config_dir / f"{stage}.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": checkpoint}]}}))
    logs = run_dir / stage / "logs" / "version_0"
    logs.mkdir(parents=True)
    leads = [f"val/csi_1mm/lead_{5 * (k + 1):03d}min" for k in range(len(csi_by_lead))]
    rows = ["epoch,step," + ",".join(leads)]
    for epoch in range(best_epoch + 2):  # the best epoch's scores; the others worse
        scores = csi_by_lead if epoch == best_epoch else [v / 2 for v in csi_by_lead]
        rows.append(f"{epoch},{10 * epoch}," + ",".join(map(str, scores)))
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n")
    checkpoints = run_dir / stage / "checkpoints"
    checkpoints.mkdir()
    for name, epoch in (("best", best_epoch), ("last", best_epoch + 1)):
        torch.save({"epoch": epoch, "global_step": 10 * epoch, "state_dict": {},
                    "nowcast": {"stage": stage, "model_kwargs": {"hidden": [8]}}}, checkpoints / f"{name}.ckpt")


@pytest.mark.parametrize(("tuned_mean", "ships"), [(0.52, "m.tune"), (0.48, "m")])
def test_a_fine_tuning_stage_ships_only_if_it_beat_its_first_stage(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                   tuned_mean: float, ships: str) -> None:
    from nowcast import shipping

    config_dir, run_dir = tmp_path / "configs", tmp_path / "runs"
    config_dir.mkdir()
    monkeypatch.setattr(shipping, "CONFIG_DIR", config_dir)
    # stage 1 chose on 30 min (0.60 there, 0.50 averaged over the leads); the fine-tuning on the mean
    _fake_stage(run_dir, config_dir, "m", "val/csi_1mm/lead_030min", 3, [0.70] * 3 + [0.60] * 3 + [0.35] * 6)
    _fake_stage(run_dir, config_dir, "m.tune", "val/csi_1mm/mean", 5, [tuned_mean] * 12)
    stage, checkpoint, scores = shipping._best_stage("m", run_dir)
    assert (stage, checkpoint["nowcast"]["stage"]) == (ships, ships)
    assert scores["monitor"] == "val/csi_1mm/mean"
    assert scores["val/csi_1mm/mean"] == pytest.approx(0.5 if ships == "m" else tuned_mean)
    assert checkpoint["epoch"] == (3 if ships == "m" else 5)


@pytest.mark.parametrize(("tuned", "ships"), [((0.35, 0.14), "m.tune"), ((0.37, 0.01), "m")])
def test_a_stage_chosen_on_light_and_heavy_rain_compares_with_a_first_stage_that_logged_them_apart(
        tmp_path, monkeypatch: pytest.MonkeyPatch, tuned: tuple[float, float], ships: str) -> None:
    """A fine-tuning stage chosen on val/csi_1_5mm (the CSI averaged over 1 and 5 mm/h, logged by
    training since the TAASRAD19 tuning) against a first stage whose logs hold the two apart: the
    first stage's number is their mean, so a tuning that gives up light rain for heavy ships only
    when the pair is better."""
    from nowcast import shipping

    config_dir, run_dir = tmp_path / "configs", tmp_path / "runs"
    config_dir.mkdir()
    monkeypatch.setattr(shipping, "CONFIG_DIR", config_dir)
    monitor = "val/csi_1_5mm/lead_030min"
    for stage, (light, heavy), logged in (("m", (0.36, 0.03), False), ("m.tune", tuned, True)):
        _fake_stage(run_dir, config_dir, stage, monitor if logged else "val/csi_1mm/lead_030min", 3, [light] * 12)
        columns = "epoch,step,val/csi_1mm/lead_030min,val/csi_5mm/lead_030min" + (f",{monitor}" if logged else "")
        best, worse = (f",{(light + heavy) / 2}", f",{(light + heavy) / 4}") if logged else ("", "")
        (run_dir / stage / "logs" / "version_0" / "metrics.csv").write_text(
            f"{columns}\n2,20,{light / 2},{heavy / 2}{worse}\n3,30,{light},{heavy}{best}\n")
    stage, checkpoint, scores = shipping._best_stage("m", run_dir)
    assert (stage, scores["monitor"]) == (ships, monitor)
    light, heavy = tuned if ships == "m.tune" else (0.36, 0.03)
    assert scores[monitor] == pytest.approx((light + heavy) / 2)


def test_a_fixed_budget_stage_ships_its_last_epoch(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A last stage without a monitored checkpoint ships its last epoch, even where its validation
    scores are below the first stage's (its config says why validation cannot choose there)."""
    from nowcast import shipping

    config_dir, run_dir = tmp_path / "configs", tmp_path / "runs"
    config_dir.mkdir()
    monkeypatch.setattr(shipping, "CONFIG_DIR", config_dir)
    _fake_stage(run_dir, config_dir, "m", "val/csi_1mm/lead_030min", 3, [0.70] * 12)
    _fake_stage(run_dir, config_dir, "m.tune", None, 5, [0.40] * 12)
    stage, checkpoint, scores = shipping._best_stage("m", run_dir)
    assert (stage, checkpoint["nowcast"]["stage"], checkpoint["epoch"]) == ("m.tune", "m.tune", 6)
    assert scores["monitor"] == "last epoch of a fixed budget"
    assert scores["val/csi_1mm/mean"] == pytest.approx(0.20)  # the last epoch's, as logged


def _two_stages_to_export(tmp_path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A model "m" whose fixed-budget fine-tuning stage ships, configs and weights under tmp_path."""
    from nowcast import shipping

    config_dir, run_dir = tmp_path / "configs", tmp_path / "runs"
    config_dir.mkdir()
    monkeypatch.setattr(shipping, "CONFIG_DIR", config_dir)
    monkeypatch.setattr(shipping, "WEIGHTS_DIR", tmp_path / "weights")
    _fake_stage(run_dir, config_dir, "m", "val/csi_1mm/lead_030min", 3, [0.70] * 12)
    _fake_stage(run_dir, config_dir, "m.tune", None, 5, [0.40] * 12)
    return shipping, config_dir, run_dir


def test_export_names_the_device_each_stage_trained_on_not_the_exporting_one(tmp_path, monkeypatch) -> None:
    """Weights trained on a lent GPU are exported elsewhere: the card must name the GPU (wall_time.json)."""
    import json

    import torch

    shipping, config_dir, run_dir = _two_stages_to_export(tmp_path, monkeypatch)
    (run_dir / "m" / "wall_time.json").write_text(json.dumps({"seconds": 110.0, "device": "NVIDIA H100"}))
    (run_dir / "m.tune" / "wall_time.json").write_text(json.dumps(
        {"seconds": 380.0, "device": "NVIDIA H100", "note": "cut off before its budget"}))
    record = shipping.export("m", run_dir)
    assert record["trained_on"] == "NVIDIA H100" and record["wall_time_s"] == 490.0
    assert [s["trained_on"] for s in record["stages"]] == ["NVIDIA H100", "NVIDIA H100"]
    assert [s.get("note") for s in record["stages"]] == [None, "cut off before its budget"]
    shipped = torch.load(tmp_path / "weights" / "m.ckpt", weights_only=False)
    assert shipped["nowcast"]["training"]["trained_on"] == "NVIDIA H100"


def test_the_shipped_stage_config_says_how_forecasts_are_post_processed(tmp_path, monkeypatch) -> None:
    """Probability matching is chosen after training, on the validation day: export takes it from the
    shipped stage's config, and --update-postprocessing writes a changed choice into shipped weights."""
    import torch
    import yaml

    shipping, config_dir, run_dir = _two_stages_to_export(tmp_path, monkeypatch)
    tune = config_dir / "m.tune.yaml"
    config = yaml.safe_load(tune.read_text())
    # an exceedance network's level is chosen after training too: the checkpoints predate it
    tune.write_text(yaml.safe_dump({**config, "model": {"probability_matching": "cdf",
                                                        "model_kwargs": {"level": 0.4, "hidden": [99]}}}))
    shipping.export("m", run_dir)
    shipped = tmp_path / "weights" / "m.ckpt"
    info = torch.load(shipped, weights_only=False)["nowcast"]
    assert info["probability_matching"] == "cdf" and info["model_kwargs"]["level"] == 0.4
    assert info["model_kwargs"]["hidden"] == [8]  # what shaped the weights comes from the checkpoint
    tune.write_text(yaml.safe_dump({**config, "model": {"model_kwargs": {"level": 0.3}}}))
    assert shipping.update_postprocessing("m") == "none"  # the matching withdrawn: the default is none
    info = torch.load(shipped, weights_only=False)["nowcast"]
    assert info["probability_matching"] == "none" and info["model_kwargs"]["level"] == 0.3


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_weight_post_processes_as_its_config_says(name: str) -> None:
    from pathlib import Path

    from nowcast.shipping import probability_matching

    forecaster = load_forecaster(name)
    assert forecaster.probability_matching == probability_matching(Path(forecaster.info["training"]["config"]).stem)


def test_the_gpu_overlay_keeps_each_stage_recipe_and_sets_bf16_and_the_budget() -> None:
    """`shipping --gpu --max-time A,B`: the overlay changes precision and the epoch cap, nothing else of
    the stage's config (its checkpoints, early stopping, data), and each kind of stage gets its budget."""
    from nowcast import shipping
    from nowcast.train_cli import NowcastCLI
    from nowcast.training import NowcastModule
    from pipelines.datamodule import RadarDataModule

    overrides = shipping.stage_overrides(True, "00:00:07:00,00:00:09:00")
    assert overrides["tune"][-2:] == ["--trainer.max_time", "00:00:09:00"]
    assert shipping.stage_overrides(False, "00:00:05:00") == {
        kind: ["--trainer.max_time", "00:00:05:00"] for kind in ("first", "tune")}
    with pytest.raises(ValueError, match="one budget or two"):
        shipping.stage_overrides(True, "1,2,3")
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        shipping.stage_overrides(True, "7min")
    args = ["--config", "configs/weights/convlstm.yaml", *overrides["first"]]
    config = NowcastCLI(NowcastModule, RadarDataModule, args=args, run=False).config
    assert (config.trainer.precision, config.trainer.max_epochs, config.trainer.max_time) == (
        "bf16-mixed", -1, "00:00:07:00")
    callbacks = [c.class_path.rsplit(".", 1)[1] for c in config.trainer.callbacks]
    assert callbacks == ["ModelCheckpoint", "ModelCheckpoint", "EarlyStopping"]
    assert (config.data.num_workers, config.data.crop, config.model.model) == (2, 128, "convlstm")


def test_a_stage_locks_its_own_run_directory(tmp_path, monkeypatch) -> None:
    """`--jobs`: stages of different models train side by side, so each locks its own run directory;
    a second run of the same stage is still refused (exit 75) and leaves no wall-time ledger."""
    import subprocess

    from nowcast import shipping
    from nowcast.model_store import LOCKED, ModelStore

    monkeypatch.chdir(tmp_path)  # `nowcast train` without a registry would lock ./runs
    monkeypatch.setattr(shipping, "CONFIG_DIR", tmp_path)  # the lock is taken before the config is read
    run_dir = tmp_path / "runs" / "weights"
    with ModelStore(run_dir / "m").lock():
        with pytest.raises(subprocess.CalledProcessError) as refused:
            shipping.train_stage("m", run_dir)
        assert refused.value.returncode == LOCKED
        with ModelStore(tmp_path / "runs").lock(), ModelStore(run_dir / "other").lock():
            pass  # neither the shared default lock nor another stage's was taken
    assert not (run_dir / "m" / "wall_time.json").exists()
