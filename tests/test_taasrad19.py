"""Training at scale on the TAASRAD19 archive: month splits, rainy windows, DDP over the Zarr archive,
and the shipped TAASRAD19 networks forecasting a real test-month sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from nowcast.forecaster import SHIPPED_TAASRAD19
from pipelines.dataset import MonthSplit, SequenceDataset
from pipelines.ingest import ingest
from tests.conftest import DATA, REPO

TAASRAD19 = DATA / "radar" / "taasrad19"
NOWCAST = str(Path(sys.executable).with_name("nowcast"))


def _month(name: str) -> Path:
    path = TAASRAD19 / f"taasrad19_{name}.nc"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the TAASRAD19 sample (../shared/data/radar/taasrad19) is needed")
    return path


@pytest.fixture(scope="module")
def two_months(tmp_path_factory: pytest.TempPathFactory) -> str:
    """December 2015 (one day) and the first 600 frames of November 2016 (a test month): real frames."""
    folder = tmp_path_factory.mktemp("taasrad19")
    with xr.open_dataset(_month("201611")) as ds:
        ds.isel(time=slice(0, 600)).to_netcdf(folder / "taasrad19_201611_part.nc")
    store = str(folder / "archive.zarr")
    # one ingest per month, oldest first: in one call the files go in path order, and this temporary
    # folder sorts before the data folder, so every December batch would be an out-of-order merge
    # rewriting all of November (tests/test_ingest.py covers that path; here it only cost a minute)
    for path in (_month("201512"), folder / "taasrad19_201611_part.nc"):
        report = ingest([path], store, "taasrad19", fmt="cf_netcdf", batch_size=128)
        assert report.exit_code == 0 and report.inserted_out_of_order == 0, report.failed
    return store


def test_month_split_puts_each_month_in_one_role(two_months: str) -> None:
    split = MonthSplit.parse({"val": ["2015-12"], "test": ["2016-11"]})
    windows = {name: SequenceDataset(two_months, "taasrad19", 4, 12, split=name, splitter=split)
               for name in ("train", "val", "test")}
    assert len(windows["train"]) == 0 and len(windows["val"]) > 0 and len(windows["test"]) > 0
    months = {name: {str(np.datetime64(int(t), "s").astype("datetime64[M]")) for t in ds.seconds[ds.starts]}
              for name, ds in windows.items()}
    assert months["val"] == {"2015-12"} and months["test"] == {"2016-11"}
    with pytest.raises(ValueError, match="2016-11 is in both"):
        MonthSplit.parse({"val": ["2016-11"], "test": ["2016-11"]})
    with pytest.raises(ValueError, match="not a month"):
        MonthSplit.parse({"val": ["November"]})


def test_rainy_windows_keep_only_windows_whose_last_input_rains(two_months: str) -> None:
    every = SequenceDataset(two_months, "taasrad19", 4, 12)
    rainy = SequenceDataset(two_months, "taasrad19", 4, 12, min_window_rain=0.01, window_rain_threshold=1.0)
    assert 0 < len(rainy) < len(every)
    wet = every.wet_fractions(1.0)
    assert np.all(wet[rainy.starts + 3] >= 0.01)
    dropped = np.setdiff1d(every.starts, rainy.starts)
    assert np.all(wet[dropped + 3] < 0.01)


def _ddp_overrides(tmp_path: Path, store: str, epochs: int) -> Path:
    run = tmp_path / "run"
    probe = {"out_dir": str(tmp_path / "probe")}
    config = {
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": epochs, "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "logs"}},
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "checkpoints"), "filename": "last",
                               "enable_version_counter": False}},
                {"class_path": "probe_callbacks.RecordTrainingWindows", "init_args": probe},
                {"class_path": "probe_callbacks.RecordValidation", "init_args": probe},
            ],
        },
        "model": {"model_kwargs": {"hidden": [8], "kernel": 3, "patch": 4}, "sampling": "none"},
        "data": {"store": store, "products": ["taasrad19"], "t_in": 4, "t_out": 3, "crop": None,
                 "batch_size": 4, "num_workers": 0, "split_months": {"val": ["2016-11"]}, "val_stride": 4,
                 "augment": False},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_ddp_on_two_processes_splits_the_archive_resumes_and_reduces_validation(
    tmp_path: Path, two_months: str,
) -> None:
    """Two gloo ranks read their own windows from the Zarr archive: disjoint within the epoch and
    together the whole epoch; the checkpoint resumes; the validation CSI is the one of both ranks'
    counts summed, not of either rank's alone."""
    overrides = _ddp_overrides(tmp_path, two_months, epochs=1)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    command = [NOWCAST, "train", "--config", str(REPO / "configs" / "convlstm.yaml"), "--config", str(overrides)]
    first = subprocess.run([*command, "--no-resume"], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    probe = tmp_path / "probe"
    seen = [[int(line.split()[1]) for line in (probe / f"rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    train = SequenceDataset(two_months, "taasrad19", 4, 3, split="train",
                            splitter=MonthSplit.parse({"val": ["2016-11"]}))
    epoch = {int(t) for t in train.seconds[train.starts + 3]}
    # each rank gets half the epoch (DistributedSampler), in whole batches of 4 (the loader drops the
    # incomplete last one): together they see the whole epoch but those few dropped windows
    per_rank = (len(epoch) + 1) // 2 // 4 * 4
    assert [len(s) for s in seen] == [per_rank, per_rank]
    union = set(seen[0]) | set(seen[1])
    assert union <= epoch and len(epoch - union) < 2 * 4
    overlap = set(seen[0]) & set(seen[1])
    assert len(overlap) <= 1, f"ranks shared {len(overlap)} windows"  # at most the sampler's one pad

    records = [json.loads((probe / f"val_rank{r}.jsonl").read_text().splitlines()[-1]) for r in (0, 1)]
    counts = np.array(records[0]["counts"]) + np.array(records[1]["counts"])
    hits, misses, false_alarms = counts[0, 2:5]  # first lead, 1 mm/h
    pooled = hits / (hits + misses + false_alarms)
    own = [np.array(r["counts"])[0, 2:5] for r in records]
    assert records[0]["counts"] != records[1]["counts"], "ranks validated the same windows"
    assert all(abs(r["csi_1mm_first_lead"] - pooled) < 1e-7 for r in records)  # what both ranks logged
    assert all(abs(h / (h + m + f) - pooled) > 1e-5 for h, m, f in own)  # neither rank's own score

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=False)
    # the second epoch trains on the whole epoch again (the step count below); its validation is not
    # what this part checks, so one batch per rank of it
    resumed = subprocess.run([*command, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    after = torch.load(last, map_location="cpu", weights_only=False)
    assert (before["epoch"], after["epoch"]) == (0, 1)
    assert after["global_step"] == 2 * before["global_step"]


@pytest.mark.parametrize("name", SHIPPED_TAASRAD19)  # the plain networks, the hybrids, the probabilistic one
def test_shipped_taasrad19_networks_forecast_a_test_month_by_name(two_months: str, name: str) -> None:
    from nowcast.forecaster import WEIGHTS_DIR, load_forecaster, shipped_models
    from pipelines.store import ProductArchive

    assert (WEIGHTS_DIR / f"{name}.ckpt").stat().st_size < 20e6
    assert name in shipped_models("taasrad19")
    forecaster = load_forecaster(name)
    assert forecaster.name == name and forecaster.architecture == name.removesuffix("_taasrad19")
    archive = ProductArchive(two_months, "taasrad19")
    times = archive.times()
    with archive.open() as ds:  # the wettest November frame's history: a real test-month sample
        rain = ds["precip"].values
    november = np.flatnonzero(times >= np.datetime64("2016-11-01"))
    wettest = november[np.argmax(np.nansum(rain[november], axis=(1, 2)))]
    frames = rain[wettest - 3 : wettest + 1]
    assert frames.shape == (4, 64, 64) and np.isnan(frames[-1]).any()
    forecast = forecaster.predict(frames, forecaster.max_lead_steps)
    assert forecast.shape == (12, 64, 64)
    nodata = np.isnan(frames[-1])
    assert np.array_equal(np.isnan(forecast), np.broadcast_to(nodata, forecast.shape))
    observed = forecast[:, ~nodata]
    assert np.isfinite(observed).all() and observed.min() >= 0.0 and observed.max() > 0.1


def test_the_pysteps_plugin_serves_a_taasrad19_network(two_months: str) -> None:
    from nowcast.pysteps_plugin import register
    from pipelines.pysteps_import import quiet_import
    from pipelines.store import ProductArchive

    assert "nowcast_predrnn_taasrad19" in register()
    method = quiet_import("pysteps.nowcasts").get_method("nowcast_predrnn_taasrad19")
    with ProductArchive(two_months, "taasrad19").open() as ds:
        frames = ds["precip"].values[-4:]
    forecast = method(frames, None, 3)
    assert forecast.shape == (3, 64, 64) and np.nanmin(forecast) >= 0.0
