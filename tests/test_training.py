"""Training through the real command line: configs, checkpoints, resuming, and DDP."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, kill_9_when

from nowcast.forecaster import load_forecaster
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

NOWCAST = str(Path(sys.executable).with_name("nowcast"))


@pytest.fixture
def synthetic_store(tmp_path: Path) -> str:
    store = str(tmp_path / "synth.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=36, shape=(64, 64), seed=2))
    return store


def write_overrides(tmp_path: Path, store: str, epochs: int, extra_callbacks: list[dict] | None = None,
                    checkpoints: list[dict] | None = None) -> Path:
    """Small data and model, CPU, logs and checkpoints under tmp_path (by default every epoch's)."""
    run = tmp_path / "run"
    config = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": epochs, "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "logs"}},
            "callbacks": [
                *(checkpoints or [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                                                 "save_top_k": -1, "filename": "{epoch:03d}"}}]),
                *(extra_callbacks or []),
            ],
        },
        "model": {"model_kwargs": {"hidden": [8], "kernel": 3, "patch": 2}},
        "data": {"store": store, "products": ["synth"], "t_in": 3, "t_out": 2, "crop": 32, "min_rain_fraction": 0.0,
                 "batch_size": 2, "num_workers": 0, "block_hours": 1, "split_pattern": ["train", "val"]},
    }
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(overrides: Path, *extra: str) -> list[str]:
    return [NOWCAST, "train", "--config", str(REPO / "configs" / "convlstm.yaml"), "--config", str(overrides), *extra]


#: a run whose assertions are about the checkpoint it leaves, the refusals, or the epochs it counts
#: (not about how much it learns): two training batches and one validation batch per epoch. Each
#: epoch still ends, validates and checkpoints as a full one does.
SHORT = ("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real two-epoch run of the plain config on its own synthetic store, shared by the tests that
    need a finished run's checkpoint (forecasting from it, refusing to resume it, fine-tuning from it):
    each of them used to train this very run first. Returns (its folder, its store); read only."""
    tmp = tmp_path_factory.mktemp("first_run")
    store = str(tmp / "synth.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=36, shape=(64, 64), seed=2))
    overrides = write_overrides(tmp, store, epochs=2)
    result = subprocess.run(train_command(overrides), capture_output=True, text=True, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, store


def test_train_writes_a_checkpoint_that_alone_can_forecast(first_run: tuple[Path, str]) -> None:
    tmp_path, synthetic_store = first_run
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    info = torch.load(checkpoint, map_location="cpu", weights_only=False)["nowcast"]
    assert (info["model"], info["t_in"], info["t_out"], info["step_minutes"]) == ("convlstm", 3, 2, 5.0)
    assert info["normalization"]["kind"] == "log" and info["data"]["products"] == ["synth"]
    forecaster = load_forecaster(str(checkpoint))
    frames = ProductArchive(synthetic_store, "synth").open()["precip"].values[:3]
    forecast = forecaster.predict(frames, 4)
    assert forecast.shape == (4, 64, 64) and np.isfinite(forecast).all() and forecast.min() >= 0.0
    metrics = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val/csi_1mm/lead_005min" in metrics and "val/mae_mm_h/lead_010min" in metrics


def test_resuming_another_runs_checkpoint_is_refused_in_one_line(tmp_path: Path, first_run: tuple[Path, str]
                                                                 ) -> None:
    run, synthetic_store = first_run
    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    # another run's last checkpoint (the narrow model's, as trained by the command line) where this run resumes
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "run" / "checkpoints" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt")
    wider_model = ("--model.model_kwargs", '{"hidden": [16], "kernel": 3, "patch": 2}')
    wider = subprocess.run(train_command(overrides, *wider_model), capture_output=True, text=True, cwd=tmp_path)
    output = wider.stdout + wider.stderr
    assert wider.returncode == 2, output[-3000:]
    assert "model_kwargs: the checkpoint has" in output and "--no-resume" in output
    assert "size mismatch" not in output and "Traceback" not in output
    fresh = subprocess.run(train_command(overrides, "--no-resume", *wider_model, *SHORT), capture_output=True,
                           text=True, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]


def test_training_resumes_from_the_last_checkpoint_after_a_kill(tmp_path: Path, synthetic_store: str) -> None:
    overrides = write_overrides(tmp_path, synthetic_store, epochs=200)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = subprocess.Popen(train_command(overrides, *SHORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=tmp_path)
    kill_9_when(first, last.exists, "training")
    killed = torch.load(last, map_location="cpu", weights_only=False)
    epoch, step = killed["epoch"], killed["global_step"]
    assert step > 0
    resumed = subprocess.run(train_command(overrides, *SHORT, "--trainer.max_epochs", str(epoch + 3)),
                             capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    final = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = step // (epoch + 1)
    assert final["epoch"] == epoch + 2
    assert final["global_step"] == steps_per_epoch * (epoch + 3)


def test_last_checkpoint_follows_every_epoch_while_best_stays_behind(tmp_path: Path, synthetic_store: str) -> None:
    """The shipped configs' pair of checkpoints: ``best`` on a monitored score, ``last`` after every
    validation. A monitored checkpoint's own save_last only moves when its best does, so a run
    stopped after its best epoch would resume from the best and redo the rest."""
    run = tmp_path / "run" / "checkpoints"
    checkpoint = "pytorch_lightning.callbacks.ModelCheckpoint"
    pair = [  # a score that never improves after epoch 0 (no scheduled sampling: always 1.0)
        {"class_path": checkpoint, "init_args": {"dirpath": str(run), "filename": "best", "save_top_k": 1,
                                                 "monitor": "train/input_truth_prob", "mode": "max"}},
        {"class_path": checkpoint, "init_args": {"dirpath": str(run), "filename": "last",
                                                 "enable_version_counter": False}},
    ]
    overrides = write_overrides(tmp_path, synthetic_store, epochs=3, checkpoints=pair)
    first = subprocess.run(train_command(overrides, "--model.sampling", "none", *SHORT), capture_output=True,
                           text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    epoch_of = {name: torch.load(run / f"{name}.ckpt", map_location="cpu", weights_only=False)["epoch"]
                for name in ("best", "last")}
    assert epoch_of == {"best": 0, "last": 2}
    resumed = subprocess.run(train_command(overrides, "--model.sampling", "none", *SHORT, "--trainer.max_epochs", "4"),
                             capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["best.ckpt", "last.ckpt"]
    with (tmp_path / "run" / "logs" / "version_1" / "metrics.csv").open() as log:
        epochs = {int(row["epoch"]) for row in csv.DictReader(log) if row.get("epoch")}
    assert epochs == {3}, f"the resumed run trained epochs {sorted(epochs)}, not only the one left"


def test_two_process_ddp_on_cpu_trains_each_rank_on_different_windows(tmp_path: Path, synthetic_store: str) -> None:
    probe = tmp_path / "probe"
    overrides = write_overrides(
        tmp_path, synthetic_store, epochs=1,
        extra_callbacks=[{"class_path": "probe_callbacks.RecordTrainingWindows", "init_args": {"out_dir": str(probe)}}],
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    command = train_command(overrides, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                            "--trainer.accelerator", "cpu", "--no-resume", *SHORT)
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [{int(line.split()[1]) for line in (probe / f"rank{r}.txt").read_text().splitlines()} for r in (0, 1)]
    assert ranks[0] and ranks[1]
    assert not ranks[0] & ranks[1], "both ranks saw the same windows"
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["nowcast"]["model"] == "convlstm"


def test_bf16_mixed_precision_trains(tmp_path: Path, synthetic_store: str) -> None:
    """The GPU setting (bf16 autocast) on CPU: the loss, masks and metrics survive mixed dtypes."""
    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    result = subprocess.run(train_command(overrides, "--trainer.precision", "bf16-mixed", "--no-resume"),
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    loss = [row.split(",")[header.index("val/loss")] for row in metrics[1:]]
    assert any(value and np.isfinite(float(value)) for value in loss)


def test_train_help_lists_the_config_keys_and_errors_point_to_it(tmp_path: Path, synthetic_store: str) -> None:
    shown = subprocess.run([NOWCAST, "train", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for key in ("--config", "--trainer.max_epochs", "--model.csi_weight", "--model.init_weights", "--data.crop"):
        assert key in shown.stdout, key
    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    wrong = subprocess.run(train_command(overrides, "--model.no_such_key", "3"), capture_output=True, text=True,
                           cwd=tmp_path)
    assert wrong.returncode != 0
    assert "run: nowcast train --help" in wrong.stderr and "cli.py" not in wrong.stderr


def test_fine_tuning_starts_from_given_weights_with_a_soft_csi_term(tmp_path: Path, first_run: tuple[Path, str]
                                                                    ) -> None:
    run, synthetic_store = first_run
    start = run / "run" / "checkpoints" / "last.ckpt"  # a trained checkpoint of another run
    tune = tmp_path / "tune"
    tune.mkdir()
    overrides = write_overrides(tune, synthetic_store, epochs=1)
    frozen = ("--model.init_weights", str(start), "--model.csi_weight", "0.5", "--optimizer.lr", "0.0")
    second = subprocess.run(train_command(overrides, "--no-resume", *frozen, *SHORT), capture_output=True, text=True,
                            cwd=tune)
    assert second.returncode == 0, second.stderr[-3000:]
    before = torch.load(start, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(tune / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # lr 0: the weights are the ones it started from, not a fresh initialisation
    for name, value in before.items():
        torch.testing.assert_close(after["state_dict"][name], value)
    assert after["hyper_parameters"]["csi_weight"] == 0.5
    losses = (tune / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in losses and "nan" not in losses.lower().split("train/loss")[1][:200]
    other = ("--model.init_weights", str(start), "--model.model", "predrnn")
    refused = subprocess.run(train_command(overrides, "--no-resume", *other), capture_output=True, text=True, cwd=tune)
    said = " ".join((refused.stdout + refused.stderr).split())  # rich wraps long lines (where, the path decides)
    assert refused.returncode != 0 and "holds 'convlstm', this run trains 'predrnn'" in said


def test_the_optimiser_is_set_in_one_place_the_config_or_the_cli_default(tmp_path: Path, synthetic_store: str
                                                                           ) -> None:
    from nowcast.train_cli import DEFAULT_OPTIMIZER, run_training

    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    short = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    # no optimizer section anywhere: the CLI's default, not a module attribute
    plain = run_training(["fit", "--config", str(overrides), *short]).trainer.optimizers[0]
    assert type(plain).__name__ == "AdamW" and plain.defaults["lr"] == DEFAULT_OPTIMIZER["init_args"]["lr"]
    # the config's section (configs/convlstm.yaml) and a command-line override win
    tuned = run_training(["fit", "--config", str(REPO / "configs" / "convlstm.yaml"), "--config", str(overrides),
                          "--optimizer.lr", "0.02", "--ckpt_path", "null", *short]).trainer.optimizers[0]
    assert tuned.defaults["lr"] == 0.02 and tuned.defaults["weight_decay"] == 0.0001
    from nowcast.training import NowcastModule

    with pytest.raises(TypeError):
        NowcastModule(lr=0.1)  # the module no longer carries a learning rate of its own


def test_a_model_is_never_trained_on_less_history_than_it_reads() -> None:
    from nowcast.models import model_class
    from nowcast.training import NowcastModule

    assert model_class("convlstm_flow").min_input_steps == model_class("optical_flow").min_input_steps == 3
    with pytest.raises(ValueError, match=r"convlstm_flow needs at least 3 input frames \(data.t_in\), got 2"):
        NowcastModule(model="convlstm_flow", t_in=2)
    NowcastModule(model="convlstm", t_in=2)  # a plain network reads whatever it is given


def test_an_sprog_hybrid_trains_on_the_sprog_cache_and_refuses_any_other(tmp_path: Path, synthetic_store: str) -> None:
    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    hybrid = ("--model.model", "convlstm_sprog", "--data.motion", "true")
    wrong = subprocess.run(train_command(overrides, *hybrid), capture_output=True, text=True, cwd=tmp_path)
    assert wrong.returncode != 0
    said = " ".join((wrong.stdout + wrong.stderr).split())  # rich wraps long lines
    assert "corrects 'sprog' forecasts, but data.extrapolation gives it 'optical_flow'" in said
    assert "optical_flow of synth" not in said  # refused before building a cache it would not use
    unknown = subprocess.run(train_command(overrides, *hybrid, "--data.extrapolation", "lk"), capture_output=True,
                             text=True, cwd=tmp_path)
    assert unknown.returncode != 0 and "data.extrapolation must be one of optical_flow, sprog, got 'lk'" in " ".join(
        (unknown.stdout + unknown.stderr).split())
    right = subprocess.run(train_command(overrides, *hybrid, "--data.extrapolation", "sprog", *SHORT),
                           capture_output=True, text=True, cwd=tmp_path)
    assert right.returncode == 0, right.stderr[-3000:]
    assert Path(synthetic_store.removesuffix(".zarr") + ".sprog.zarr", "synth", "done").exists()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    info = torch.load(checkpoint, map_location="cpu", weights_only=False)["nowcast"]
    assert info["model"] == "convlstm_sprog" and info["data"]["extrapolation"] == "sprog"
    frames = ProductArchive(synthetic_store, "synth").open()["precip"].values[:3]
    forecast = load_forecaster(str(checkpoint)).predict(frames, 4)
    assert forecast.shape == (4, 64, 64) and np.isfinite(forecast).all() and forecast.min() >= 0.0


def test_the_quantile_loss_trains_the_quantile_that_maximises_expected_csi() -> None:
    """Fitted to skewed rain, the pinball loss lands on the asked quantile, not the mean; the
    forecast then says "rain" wherever the chance of rain is above a third, at any threshold."""
    from nowcast.losses import pinball
    from nowcast.training import NowcastModule

    rng = np.random.default_rng(0)
    target = torch.tensor(rng.exponential(2.0, size=(4, 3, 1, 32, 32)), dtype=torch.float32)
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., :4] = False
    target[..., :4] = 1000.0  # nodata: must not pull the fit
    level = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([level], lr=0.05)
    for _ in range(600):
        optimiser.zero_grad()
        pinball(level.expand_as(target), target, mask, 2 / 3).backward()
        optimiser.step()
    observed, fitted = target[mask], float(level.detach())
    assert fitted == pytest.approx(float(torch.quantile(observed, 2 / 3)), abs=0.05)
    assert fitted > float(observed.mean()) + 0.1  # not the mean: exp(2)'s 2/3-quantile is 2.2, its mean 2
    with pytest.raises(ValueError, match="quantile must lie strictly between 0 and 1, got 1.0"):
        NowcastModule(loss="quantile", quantile=1.0)
    with pytest.raises(ValueError, match="loss must be one of 'balanced', 'mse_mae', 'quantile', got 'l1'"):
        NowcastModule(loss="l1")


def test_a_plain_network_learns_from_a_teacher_forecast_only_when_the_data_gives_one(
        tmp_path: Path, synthetic_store: str) -> None:
    overrides = write_overrides(tmp_path, synthetic_store, epochs=1)
    missing = subprocess.run(train_command(overrides, "--model.teacher_weight", "1.0"), capture_output=True,
                             text=True, cwd=tmp_path)
    assert missing.returncode != 0
    assert "model.teacher_weight needs a teacher's forecasts: set data.teacher" in missing.stdout + missing.stderr
    taught = subprocess.run(train_command(overrides, "--no-resume", "--model.teacher_weight", "1.0",
                                          "--data.teacher", "optical_flow", *SHORT), capture_output=True, text=True,
                            cwd=tmp_path)
    assert taught.returncode == 0, taught.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["teacher_weight"] == 1.0
    assert checkpoint["nowcast"]["data"]["teacher"] == "optical_flow"  # the card can say what it learned from
    from pipelines.extrapolation import cache_path

    assert Path(cache_path(synthetic_store, "optical_flow")).is_dir()
