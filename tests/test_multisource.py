"""Satellite frames feed the models (issue 13): alignment, the regrid cache, channels through the
dataset, training, the checkpoint, evaluate, backfill and the service, on real NWC SAF CRR frames.

The pair is ``pipelines.paired_sample``: real CRR regridded onto the real KNMI radar grid (the
target) and the same CRR filed one step early on its own geostationary grid (the auxiliary
product), so the auxiliary channel at time t *is* the target at t + 15 min."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import nowcast_cli, nowcast_in_process, sample_files, train_command
from test_service import start_server

from nowcast.forecaster import load_forecaster
from nowcast.models import BASELINES, MODELS, get_model, model_class
from pipelines import channels
from pipelines.channels import AuxiliaryReader, AuxiliarySpec, MissingChannel, align_latest, cached_mapping
from pipelines.datamodule import RadarDataModule
from pipelines.ingest import ingest
from pipelines.paired_sample import write_paired_sample
from pipelines.store import ProductArchive

T = np.datetime64


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> str:
    """12 real CRR frames (3 h, 15 min) as target on the KNMI grid, and the same filed 15 min early."""
    store = str(tmp_path_factory.mktemp("paired") / "archive.zarr")
    ingest(sample_files("saf")[12:24], store, "saf", fmt="saf_crri")
    ingest(sample_files("knmi", 1), store, "knmi", fmt="knmi_hdf5")
    write_paired_sample(store, "saf", "knmi", "crr_knmi", "crr_early")
    return store


@pytest.mark.parametrize("name", [m for m in MODELS if m not in BASELINES])
def test_every_network_reads_c_channels_and_forecasts_the_target_channel(name: str) -> None:
    kwargs = {"hidden": (8, 8), "kernel": 3, "patch": 2, "in_channels": 5, "out_channels": 1}
    hybrid = model_class(name).motion
    if hasattr(model_class(name), "freeze_body"):  # a head on a frozen body: let the body learn here
        kwargs["train_body"] = True
    net = get_model(name, **kwargs, **({"normalization": None} if hybrid else {}))
    if hybrid:  # a hybrid's head starts at zero (it *is* its baseline): wake it up
        torch.nn.init.normal_(net.output.weight, std=0.1)
    inputs, targets = torch.rand(2, 3, 5, 16, 16), torch.rand(2, 2, 1, 16, 16)
    ext = {"extrapolation": torch.rand(2, 4, 1, 16, 16)} if hybrid else {}  # no optical flow, no S-PROG
    out = net(inputs, 2, targets=targets, **ext)
    assert out.shape == (2, 2, 1, 16, 16)
    out.mean().backward()
    first = next(net.parameters())  # the auxiliary channels reach the first layer's weights
    assert first.grad is not None and first.grad.abs().sum() > 0
    changed = inputs.clone()
    changed[:, :, 1:] += 1.0  # the forecast depends on the auxiliary channels
    assert not torch.allclose(net(changed, 2, **ext), net(inputs, 2, **ext))
    assert net(inputs, 4, **ext).shape == (2, 4, 1, 16, 16)  # any number of leads: auxiliary channels held


def test_a_15_minute_product_aligns_onto_5_minute_times_within_its_tolerance() -> None:
    satellite = np.array([T("2018-06-01T12:00:00"), T("2018-06-01T12:15:00"), T("2018-06-01T12:45:00")])
    radar = np.arange(T("2018-06-01T11:55:00"), T("2018-06-01T13:05:00"), np.timedelta64(5, "m"))
    index = align_latest(radar, satellite, tolerance_minutes=15)
    got = dict(zip([str(t)[11:16] for t in radar.astype("datetime64[s]")], index.tolist(), strict=True))
    assert got["11:55"] == -1  # nothing before: never a frame from the future
    assert [got[k] for k in ("12:00", "12:05", "12:10", "12:15")] == [0, 0, 0, 1]
    assert [got[k] for k in ("12:20", "12:25", "12:30")] == [1, 1, 1]  # 15 min old is still within
    assert [got[k] for k in ("12:35", "12:40")] == [-1, -1]  # the 12:30 gap: too old, missing
    assert [got[k] for k in ("12:45", "13:00")] == [2, 2]
    assert align_latest(radar, satellite, tolerance_minutes=0).tolist().count(-1) == len(radar) - 3
    assert (align_latest(radar, satellite[:0], 15) == -1).all()


def test_the_regrid_mapping_is_computed_once_and_read_back_from_the_store(paired: str) -> None:
    source, target = ProductArchive(paired, "crr_early").grid(), ProductArchive(paired, "crr_knmi").grid()
    channels._memory.clear()
    first = cached_mapping(paired, source, target)
    assert first.shape == (2, *target.shape) and np.isfinite(first).all()  # CRR covers the whole KNMI grid
    key = channels.mapping_key(source, target)
    stored = zarr.open_array(paired, path=f"{channels.REGRID_GROUP}/{key}", mode="r+", zarr_format=3)
    np.testing.assert_array_equal(stored[...], first)
    stored[0, 0, 0] = -7.0  # a mark: the next process must read this copy, not compute a new one
    channels._memory.clear()
    assert cached_mapping(paired, source, target)[0, 0, 0] == -7.0
    stored.attrs["complete"] = False  # as a writer killed mid-save leaves it: recomputed, not trusted
    channels._memory.clear()
    assert cached_mapping(paired, source, target)[0, 0, 0] == first[0, 0, 0]
    assert "_regrid" not in [p for p in zarr.open_group(paired, mode="r").group_keys() if not p.startswith("_")]


def test_an_auxiliary_reader_regrids_aligns_and_reports_missing_frames(paired: str) -> None:
    target = ProductArchive(paired, "crr_knmi")
    times = target.times()
    reader = AuxiliaryReader(paired, AuxiliarySpec("crr_early", tolerance_minutes=0), target.grid())
    got = reader.read(times[3:6], 100, 200, 64, 80)
    want = target.open()["precip"].isel(time=slice(4, 7), y=slice(100, 164), x=slice(200, 280)).values
    assert got.missing_frames == 0 and got.rain.shape == (3, 64, 80)
    np.testing.assert_allclose(got.rain, want, atol=0.011)  # the target one step ahead (stored to 0.01 mm/h)
    late = reader.read(times[-1:])  # the last target time has no early frame at that time
    assert late.missing_frames == 1 and np.isnan(late.rain).all()
    tolerant = AuxiliaryReader(paired, AuxiliarySpec("crr_early", tolerance_minutes=15), target.grid())
    assert tolerant.read(times[-1:]).missing_frames == 0
    with pytest.raises(MissingChannel, match="'goes16'"):
        AuxiliaryReader(paired, AuxiliarySpec("goes16"), target.grid())


def test_training_windows_carry_the_auxiliary_channels_aligned_cropped_and_augmented_alike(paired: str) -> None:
    module = RadarDataModule(store=paired, products=["crr_knmi"], t_in=2, t_out=1, crop=64, batch_size=4,
                             block_hours=1, split_pattern=["train", "train", "val"], num_workers=0,
                             auxiliary=[{"product": "crr_early", "tolerance_minutes": 0}], min_rain_fraction=0.05)
    module.setup("fit")
    info = module.describe()
    assert info["auxiliary"][0]["product"] == "crr_early" and info["auxiliary"][0]["tolerance_minutes"] == 0
    assert info["auxiliary_missing"]["crr_early"]["missing"] == 0
    batch = next(iter(module.train_dataloader()))
    assert batch["inputs"].shape[2] == 3 and batch["targets"].shape[2] == 1  # target, aux rain, aux mask
    assert batch["inputs"][:, :, 2].min() == 1  # CRR covers the grid: every auxiliary pixel has a value
    # augmentation rotates/flips every channel alike: the aux at the last input is the next target
    assert torch.allclose(batch["inputs"][:, -1, 1], batch["targets"][:, 0, 0], atol=2e-3)
    assert batch["targets"][:, 0, 0].max() > 0.1  # and there is rain in it


def _train(tmp: Path, paired: str, name: str, auxiliary: list | None) -> Path:
    data = {"store": paired, "products": ["crr_knmi"], "t_in": 2, "t_out": 1, "crop": 32, "min_rain_fraction": 0.05,
            "batch_size": 4, "num_workers": 0, "block_hours": 1, "split_pattern": ["train", "train", "val"]}
    if auxiliary:
        data["auxiliary"] = auxiliary
    # 15 epochs: the auxiliary run's val loss is ~0.03 by then against ~0.14 alone (0.03 against ~0.10
    # at 30), far inside the test's 0.6 ratio either way
    overrides = {
        "trainer": {"accelerator": "cpu", "max_epochs": 15, "enable_progress_bar": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp / name)}},
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp / name / "ckpt"), "save_last": True}}]},
        "model": {"model_kwargs": {"hidden": [8], "patch": 2}, "loss": "mse_mae"},
        "data": data, "lr_scheduler": None,
    }
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    done = subprocess.run(train_command(config), capture_output=True, text=True, cwd=tmp)  # its own runs/ lock
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / name


def _final_val_loss(run: Path) -> float:
    rows = [r for r in csv.DictReader(open(next(run.glob("**/metrics.csv")))) if r.get("val/loss")]
    return float(rows[-1]["val/loss"])


@pytest.fixture(scope="module")
def trained(paired: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {"with": _train(tmp, paired, "with", [{"product": "crr_early", "tolerance_minutes": 0}]),
            "without": _train(tmp, paired, "without", None)}


def test_the_model_uses_the_auxiliary_channel_its_loss_falls_below_the_target_alone(trained: dict[str, Path]) -> None:
    with_aux, alone = _final_val_loss(trained["with"]), _final_val_loss(trained["without"])
    assert with_aux < 0.6 * alone, (with_aux, alone)


def test_the_checkpoint_alone_says_which_products_it_reads_and_refuses_without_them(
        trained: dict[str, Path], paired: str) -> None:
    forecaster = load_forecaster(str(trained["with"] / "ckpt" / "last.ckpt"))
    assert forecaster.input_products == ["crr_early"]
    spec = forecaster.auxiliary[0]
    assert (spec.tolerance_minutes, spec.method, spec.rule) == (0, "bilinear", "latest_not_after")
    assert spec.normalization == forecaster.normalizer.to_dict()
    assert forecaster.model.in_channels == 3 and forecaster.model.out_channels == 1
    window = ProductArchive(paired, "crr_knmi").open()["precip"].isel(time=slice(4, 6), y=slice(0, 64),
                                                                       x=slice(0, 64)).values
    with pytest.raises(MissingChannel, match="'crr_early'"):
        forecaster.predict(window, 1)
    aux = {"crr_early": np.where(np.arange(64) < 32, window, np.nan)}  # half of it without a value
    out = forecaster.predict(window, 2, auxiliary=aux)
    assert out.shape == (2, 64, 64) and np.isfinite(out).all()
    assert load_forecaster(str(trained["without"] / "ckpt" / "last.ckpt")).input_products == []


def test_evaluate_and_backfill_read_the_auxiliary_product_from_the_archive(
        trained: dict[str, Path], paired: str, tmp_path: Path) -> None:
    checkpoint = str(trained["with"] / "ckpt" / "last.ckpt")
    report = tmp_path / "report.json"
    done = nowcast_in_process("evaluate", "--store", paired, "--product", "crr_knmi", "--model", checkpoint,
                              "--model", "persistence", "--out", str(report), "--crop", "256")
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(report.read_text())
    assert scores["n_cases"] > 0
    label = next(k for k in scores["models"] if k != "persistence")
    assert scores["models"][label]["auxiliary_cases_missing"] == {"crr_early": 0}
    times = ProductArchive(paired, "crr_knmi").times()
    out = str(tmp_path / "forecasts.zarr")
    # the real ``nowcast`` process of this test
    done = nowcast_cli("backfill", "--model", checkpoint, "--store", paired, "--product", "crr_knmi", "--start",
                       str(times[3]), "--end", str(times[-1]), "--out", out, "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    # the last init's input has no early frame (tolerance 0): written with zeros-plus-mask, and counted
    assert '"crr_early": 1' in done.stdout + done.stderr
    # an archive without the auxiliary product: refused, naming it
    bare = str(tmp_path / "bare.zarr")
    ingest(sample_files("saf", 4), bare, "crr_knmi", fmt="saf_crri")
    done = nowcast_in_process("evaluate", "--store", bare, "--product", "crr_knmi", "--model", checkpoint,
                              "--out", str(tmp_path / "bare.json"))
    assert done.returncode != 0 and "crr_early" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def served(trained: dict[str, Path], paired: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_server(tmp_path_factory.mktemp("service"), {
        "store": paired, "models": ["persistence", f"crr_aux={trained['with'] / 'ckpt' / 'last.ckpt'}"],
        "max_grid_pixels": 800 * 800, "max_lead_steps": 4,
    })


def test_the_service_reads_every_channel_and_names_a_missing_one(served: str, paired: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"{served}/v1/models").json()["models"]}
    assert models["crr_aux"]["input_products"] == ["crr_early"] and models["persistence"]["input_products"] == []
    times = ProductArchive(paired, "crr_knmi").times()
    archive = httpx.post(f"{served}/v1/forecast", json={"model": "crr_aux", "lead_steps": 2, "product": "crr_knmi",
                                                         "time": f"{times[5]}Z"}, timeout=60)
    assert archive.status_code == 200, archive.text
    assert np.asarray(archive.json()["frames"], dtype=float).shape == (2, 765, 700)
    frames = ProductArchive(paired, "crr_knmi").open()["precip"].isel(time=slice(4, 6), y=slice(0, 32),
                                                                      x=slice(0, 32)).values
    body = {"model": "crr_aux", "lead_steps": 1, "frames": np.nan_to_num(frames).tolist(), "step_minutes": 15,
            "end_time": f"{times[5]}Z"}
    missing = httpx.post(f"{served}/v1/forecast", json=body)
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_channel"
    assert "'crr_early'" in missing.json()["error"]["message"]
    wrong = httpx.post(f"{served}/v1/forecast", json={**body, "auxiliary": {"crr_early": body["frames"][:1]}})
    assert wrong.status_code == 422 and "crr_early" in wrong.json()["error"]["message"]
    ok = httpx.post(f"{served}/v1/forecast", json={**body, "auxiliary": {"crr_early": body["frames"]}})
    assert ok.status_code == 200, ok.text
    stray = httpx.post(f"{served}/v1/forecast", json={**inline_body(), "auxiliary": {"crr_early": [[[0.0]]]}})
    assert stray.status_code == 422 and stray.json()["error"]["code"] == "unknown_channel"


def inline_body() -> dict:
    return {"model": "persistence", "lead_steps": 1, "frames": [[[0.0, 1.0]]] * 2, "step_minutes": 5,
            "end_time": "2021-07-01T12:00:00Z"}


def test_an_auxiliary_product_that_never_overlaps_is_reported_loudly(paired: str) -> None:
    """KNMI radar from 2010 beside 2018 CRR: no frame within 15 min of any input, said with the fix."""
    module = RadarDataModule(store=paired, products=["crr_knmi"], t_in=2, t_out=1, crop=64, block_hours=1,
                             split_pattern=["train", "train", "val"], num_workers=0, auxiliary=["knmi"])
    with pytest.warns(UserWarning, match=r"auxiliary 'knmi': \d+ of \d+ .*100%.*--overlap knmi"):
        module.setup("fit")
    assert module.describe()["auxiliary_missing"]["knmi"]["missing"] > 0
