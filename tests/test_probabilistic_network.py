"""The probabilistic network (``convlstm_exceedance``, nowcast/models/exceedance.py) and its shipped TAASRAD19
weights: the head's distribution, its start from the deterministic convlstm, its training loss, and the
shipped network forecasting a real TAASRAD19 test-month sample, directly and through the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import DATA
from test_service import start_server

from nowcast.forecaster import WEIGHTS_DIR, load_forecaster
from nowcast.models import get_model
from nowcast.models.exceedance import INIT_TEMPERATURE
from nowcast.training import CheckpointMismatch, NowcastModule
from pipelines.normalization import RainNormalizer
from pipelines.store import ProductArchive

NAME = "convlstm_exceedance_taasrad19"
#: November 2016 (a test month), frames 506..513 UTC index: rain up to 14 mm/h, nodata outside the radar circle
MONTH, FRAMES = DATA / "radar" / "taasrad19" / "taasrad19_201611.nc", slice(506, 514)
THRESHOLDS = [0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 40.0, 150.0]


@pytest.fixture(scope="module")
def taasrad19(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Eight real TAASRAD19 frames of a test month in a store of their own."""
    from pipelines.ingest import ingest

    if not MONTH.is_file():
        pytest.fail(f"{MONTH} is missing: the TAASRAD19 sample (../shared/data/radar/taasrad19) is needed")
    folder = tmp_path_factory.mktemp("taasrad19_sample")
    with xr.open_dataset(MONTH) as ds:
        ds.isel(time=FRAMES).to_netcdf(folder / "taasrad19_201611_sample.nc")
    store = str(folder / "archive.zarr")
    assert ingest([folder / "taasrad19_201611_sample.nc"], store, "taasrad19", fmt="cf_netcdf").exit_code == 0
    return store


@pytest.fixture(scope="module")
def frames(taasrad19: str) -> np.ndarray:
    with ProductArchive(taasrad19, "taasrad19").open() as ds:
        rain = ds["precip"].values[-4:]
    assert rain.shape == (4, 64, 64) and np.isnan(rain[-1]).mean() > 0.1 and np.nanmean(rain[-1] >= 1.0) > 0.02
    return rain


def tiny(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model("convlstm_exceedance", hidden=(8, 8), kernel=3, patch=2, **kwargs).eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)  # a head with opinions, increments included
    return model


def test_probabilities_never_rise_with_the_threshold_and_interpolate_between_the_heads() -> None:
    model = tiny()
    inputs = torch.rand(2, 4, 1, 16, 16) * 0.5
    with torch.no_grad():
        s = model.survival(inputs, 3)  # [B, T, K, H, W] at the head's own thresholds
        assert s.shape == (2, 3, len(model.thresholds), 16, 16)
        assert (s[:, :, 1:] <= s[:, :, :-1]).all() and s.min() >= 0 and s.max() <= 1
        own = model.forward_probabilities(inputs, 3, model.knots[:-1])
        torch.testing.assert_close(own, s)
        levels = RainNormalizer().forward(torch.tensor(THRESHOLDS))
        p = model.forward_probabilities(inputs, 3, levels)
    assert p.shape == (2, 3, len(THRESHOLDS), 16, 16)
    assert (p[:, :, 1:] <= p[:, :, :-1] + 1e-6).all() and p.min() >= 0 and p.max() <= 1
    torch.testing.assert_close(p[:, :, 0], s[:, :, 0])  # below the first threshold: no rain below it
    assert (p[:, :, -1] == 0).all()  # above the ceiling (100 mm/h)
    between = p[:, :, 3]  # 1 mm/h is a head threshold; 2.5 lies between 2 and 3
    torch.testing.assert_close(between, s[:, :, 3])
    assert ((p[:, :, 4] <= s[:, :, 4] + 1e-6) & (p[:, :, 4] >= s[:, :, 5] - 1e-6)).all()


def test_the_quantiles_invert_the_survival_function_and_the_mean_is_its_area() -> None:
    model = tiny()
    inputs = torch.rand(1, 4, 1, 16, 16) * 0.5
    with torch.no_grad():
        s = model.survival(inputs, 2)
        crossed = 0
        for exceedance in (0.1, 0.3, 0.5):
            z = model.quantile_from(s, exceedance)  # [B, T, H, W]
            wet = z > model.knots[0]
            assert (z[~wet] == 0).all() and (s[:, :, 0][~wet] < exceedance + 1e-6).all()
            for index in torch.nonzero(wet.reshape(-1)).flatten()[:5].tolist():  # S at the quantile is the probability
                at = model.probabilities_from(s, z.reshape(-1)[index].view(1))[:, :, 0].reshape(-1)[index]
                assert float(at) == pytest.approx(exceedance, abs=1e-4)
                crossed += 1
        assert crossed > 0
        # a sure event: S = 1 up to the fourth threshold, 0 above: the mean is the area under that step
        sure = torch.zeros(1, 1, len(model.thresholds), 1, 1)
        sure[:, :, :4] = 1.0
        k = model.knots
        assert float(model.mean_from(sure)) == pytest.approx(float(k[3] + 0.5 * (k[4] - k[3])), rel=1e-6)
        assert float(model.quantile_from(sure, 0.5)) == pytest.approx(float(k[3] + 0.5 * (k[4] - k[3])), rel=1e-6)
    det = model(inputs, 2)
    assert det.shape == (1, 2, 1, 16, 16) and (det >= 0).all()


def test_it_starts_from_the_deterministic_convlstm_as_soft_steps_of_its_forecast(frames: np.ndarray) -> None:
    checkpoint = torch.load(WEIGHTS_DIR / "convlstm_taasrad19.ckpt", map_location="cpu", weights_only=False)
    info = checkpoint["nowcast"]
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    deterministic = get_model("convlstm", **info["model_kwargs"]).eval()
    deterministic.load_state_dict(state)
    model = get_model("convlstm_exceedance", **info["model_kwargs"]).eval()
    model.load_initial_state(state, "convlstm")
    z = RainNormalizer().forward(torch.from_numpy(np.nan_to_num(frames)))[None, :, None].float()
    with torch.no_grad():
        y = deterministic(z, 3)  # [1, 3, 1, H, W]
        s = model.survival(z, 3)
    want = torch.sigmoid((y - model.knots[:-1].view(1, 1, -1, 1, 1)) / INIT_TEMPERATURE)
    torch.testing.assert_close(s, want, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not 'predrnn'"):
        model.load_initial_state(state, "predrnn")


def test_training_uses_the_cross_entropy_over_observed_pixels_and_starts_from_a_convlstm() -> None:
    kwargs = {"hidden": [48, 48], "kernel": 3, "patch": 4}
    module = NowcastModule(model="convlstm_exceedance", model_kwargs=kwargs, t_in=4, t_out=2,
                           init_weights=str(WEIGHTS_DIR / "convlstm_taasrad19.ckpt"))
    torch.manual_seed(0)
    targets = torch.rand(2, 2, 1, 16, 16) * 0.5
    mask = torch.ones_like(targets, dtype=torch.bool)
    mask[..., :8] = False
    batch = {"inputs": torch.rand(2, 4, 1, 16, 16) * 0.5, "targets": targets, "target_mask": mask}
    loss, forecast = module._own_loss(batch)
    assert forecast.shape == (2, 2, 1, 16, 16) and torch.isfinite(loss) and loss > 0
    # masked pixels do not count: any target there leaves the loss as it is
    changed = dict(batch, targets=torch.where(mask, targets, torch.ones_like(targets)))
    torch.testing.assert_close(module._own_loss(changed)[0], loss)
    loss.backward()
    assert module.net.output.weight.grad.abs().sum() > 0
    with pytest.raises(CheckpointMismatch, match="starts from a convlstm"):
        NowcastModule(model="convlstm_exceedance", model_kwargs=kwargs, t_in=4, t_out=2,
                      init_weights=str(WEIGHTS_DIR / "predrnn_taasrad19.ckpt"))


def test_the_shipped_network_forecasts_probabilities_of_a_real_taasrad19_sample(frames: np.ndarray) -> None:
    forecaster = load_forecaster(NAME)
    assert forecaster.outputs == ["deterministic", "probability"]
    assert forecaster.architecture == "convlstm_exceedance" and forecaster.name == NAME
    p = forecaster.predict_probabilities(frames, 12, THRESHOLDS)
    assert p.shape == (12, len(THRESHOLDS), 64, 64)
    nodata = np.isnan(frames[-1])
    assert np.isnan(p[:, :, nodata]).all(), "nodata stays nodata"
    valid = p[:, :, ~nodata]
    assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1
    assert (np.diff(valid, axis=1) <= 1e-6).all(), "a higher threshold is never more likely"
    assert valid[0, 2].max() > 0.5 and (valid[:, -1] == 0).all()  # it rains now; nothing above 100 mm/h
    forecast = forecaster.predict(frames, 12)
    assert forecast.shape == (12, 64, 64)
    assert np.array_equal(np.isnan(forecast), np.broadcast_to(nodata, forecast.shape))
    assert np.isfinite(forecast[:, ~nodata]).all() and forecast[:, ~nodata].min() >= 0
    assert forecast[0, ~nodata].max() > 1.0


@pytest.fixture(scope="module")
def exceedance_server(taasrad19: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_server(tmp_path_factory.mktemp("exceedance_service"), {
        "store": taasrad19, "models": [NAME], "max_lead_steps": 12, "max_thresholds": 4})


def test_the_service_serves_its_probabilities(exceedance_server: str, frames: np.ndarray) -> None:
    models = {m["name"]: m for m in httpx.get(f"{exceedance_server}/v1/models").json()["models"]}
    assert models[NAME]["outputs"] == ["deterministic", "probability"]
    values = np.where(np.isnan(frames), None, np.round(frames, 3)).tolist()
    body = {"model": NAME, "lead_steps": 6, "frames": values, "step_minutes": 5, "end_time": "2016-11-02T18:05:00Z",
            "output": "probability", "thresholds": [0.5, 1, 5]}
    response = httpx.post(f"{exceedance_server}/v1/forecast", json=body, timeout=60)
    assert response.status_code == 200, response.text
    p = np.array(response.json()["probabilities"], dtype=np.float64)  # null -> NaN
    assert p.shape == (6, 3, 64, 64)
    nodata = np.isnan(frames[-1])
    assert np.isnan(p[:, :, nodata]).all() and np.isfinite(p[:, :, ~nodata]).all()
    assert p[:, :, ~nodata].min() >= 0 and p[:, :, ~nodata].max() <= 1
    assert (np.diff(p[:, :, ~nodata], axis=1) <= 1e-6).all()
    direct = load_forecaster(NAME).predict_probabilities(frames, 6, [0.5, 1, 5])
    np.testing.assert_allclose(p, direct, atol=1e-3)  # the service answers to 3 decimals
    # from the archive by product, and no ensemble: it has no members
    by_product = {"model": NAME, "lead_steps": 3, "product": "taasrad19", "output": "probability", "thresholds": [1]}
    answer = httpx.post(f"{exceedance_server}/v1/forecast", json=by_product, timeout=60)
    assert answer.status_code == 200, answer.text
    assert np.array(answer.json()["probabilities"], dtype=np.float64).shape == (3, 1, 64, 64)
    refused = httpx.post(f"{exceedance_server}/v1/forecast", json=dict(body, output="ensemble", members=2), timeout=60)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "output_not_offered"


def test_the_shipped_weights_are_small_and_list_their_thresholds() -> None:
    path = WEIGHTS_DIR / f"{NAME}.ckpt"
    assert path.stat().st_size < 20e6
    info = torch.load(path, map_location="cpu", weights_only=False)["nowcast"]
    assert info["model"] == "convlstm_exceedance" and info["t_in"] == 4 and info["t_out"] == 12
    assert info["model_kwargs"]["thresholds"][0] == 0.1 and "training" in info
    assert Path(info["training"]["config"]).name == f"{NAME}.yaml"


def test_the_pysteps_plugin_serves_its_field_and_refuses_members(frames: np.ndarray) -> None:
    """Found by pysteps as ``nowcast_convlstm_exceedance_taasrad19``; it forecasts probabilities, not
    members, so an ensemble request is refused by name instead of answered with copies of one field."""
    from nowcast.pysteps_plugin import register
    from pipelines.pysteps_import import quiet_import

    assert f"nowcast_{NAME}" in register()
    method = quiet_import("pysteps.nowcasts").get_method(f"nowcast_{NAME}")
    forecast = method(frames, None, 3)
    nodata = np.isnan(frames[-1])
    assert forecast.shape == (3, *frames.shape[1:])
    assert np.isnan(forecast[:, nodata]).all() and np.nanmin(forecast) >= 0.0
    with pytest.raises(ValueError, match="no ensemble"):
        method(frames, None, 3, n_ens_members=4)
