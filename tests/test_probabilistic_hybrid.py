"""The probabilistic S-PROG hybrid (``convlstm_sprog_exceedance``, nowcast/models/exceedance_hybrid.py): its
learned neighbourhood, the frozen body it starts from, its training loss, and the shipped weights on a real
1 km sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import DATA

from nowcast.forecaster import WEIGHTS_DIR, load_forecaster
from nowcast.models import get_model
from nowcast.models.exceedance_hybrid import ConvLSTMSProgExceedance
from nowcast.training import CheckpointMismatch, NowcastModule
from pipelines.normalization import RainNormalizer

NAME = "convlstm_sprog_exceedance"
#: November 2016 (a TAASRAD19 test month): rain up to 14 mm/h, nodata outside the radar circle
MONTH, FRAMES = DATA / "radar" / "taasrad19" / "taasrad19_201611.nc", slice(510, 514)
THRESHOLDS = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 150.0]


def tiny(**kwargs: object) -> ConvLSTMSProgExceedance:
    torch.manual_seed(0)
    return get_model("convlstm_sprog_exceedance", hidden=(8, 8), kernel=3, patch=2, **kwargs).eval()


def taasrad19_frames() -> np.ndarray:
    """Four real frames (mm/h, NaN outside the radar circle) of a TAASRAD19 test month."""
    if not MONTH.is_file():
        pytest.fail(f"{MONTH} is missing: the TAASRAD19 sample (../shared/data/radar/taasrad19) is needed")
    with xr.open_dataset(MONTH) as ds:
        dbz = ds["reflectivity"].isel(time=FRAMES).values.astype(np.float64)
    rain = ((10 ** (dbz / 10)) / 200.0) ** (1 / 1.6)  # Marshall-Palmer, as the importer's default
    return np.where(np.isfinite(dbz), rain, np.nan).astype(np.float32)


def test_probabilities_never_rise_with_the_threshold_whatever_the_head_learned() -> None:
    model = tiny()
    with torch.no_grad():
        for parameter in (model.own_weight, model.below_weight, model.first_bias, model.bias_steps):
            parameter.normal_(std=2.0)  # a head with strong opinions
    inputs = torch.rand(2, 4, 1, 16, 16) * 0.5
    with torch.no_grad():
        s = model.survival(inputs, 3)
        p = model.forward_probabilities(inputs, 3, RainNormalizer().forward(torch.tensor(THRESHOLDS)))
    assert s.shape == (2, 3, len(model.thresholds), 16, 16) and p.shape == (2, 3, len(THRESHOLDS), 16, 16)
    assert (s[:, :, 1:] <= s[:, :, :-1] + 1e-6).all() and s.min() >= 0 and s.max() <= 1
    assert (p[:, :, 1:] <= p[:, :, :-1] + 1e-6).all() and (p[:, :, -1] == 0).all()  # none above 100 mm/h


def test_rain_forecast_nearby_makes_rain_likely_as_far_as_the_learned_scale_reaches() -> None:
    """One wet pixel forecast: with the pixel's own fraction only, its neighbours 3 px away stay dry; with
    the weight on the 4-pixel neighbourhood they become likely, and more likely than 10 px away."""
    model = tiny(scales=(0, 4))
    y = torch.zeros(1, 1, 1, 33, 33)
    y[..., 16, 16] = float(RainNormalizer().forward(torch.tensor(5.0)))
    chances = {}
    for weights in ((1.0, 0.0), (0.0, 1.0)):
        with torch.no_grad():
            model.own_weight.copy_(torch.tensor([weights]).clamp(min=1e-6).expm1().log())
            model.below_weight.fill_(-30.0)
            p = torch.sigmoid(model.logits_from(y))[0, 0, 3]  # the 1 mm/h threshold
        chances[weights] = (float(p[16, 16]), float(p[16, 19]), float(p[16, 26]))
    own_only, neighbourhood = chances[(1.0, 0.0)], chances[(0.0, 1.0)]
    assert own_only[0] > 0.99 and own_only[1] < 1e-3
    assert neighbourhood[1] > 10 * own_only[1] and neighbourhood[1] > neighbourhood[2]
    assert neighbourhood[0] < own_only[0]  # the lone cell's own pixel is less sure: its neighbourhood is dry


def test_it_starts_from_a_trained_hybrid_whose_forecast_it_keeps() -> None:
    checkpoint = torch.load(WEIGHTS_DIR / "convlstm_sprog_taasrad19.ckpt", map_location="cpu", weights_only=False)
    info = checkpoint["nowcast"]
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    body = get_model("convlstm_sprog", **info["model_kwargs"]).eval()
    body.load_state_dict(state)
    model = get_model(NAME, **info["model_kwargs"]).eval()
    model.load_initial_state(state, "convlstm_sprog")
    z = RainNormalizer().forward(torch.from_numpy(np.nan_to_num(taasrad19_frames())))[None, :, None].float()
    ext = torch.rand(1, 3, 1, 64, 64) * 0.3  # a given extrapolation, as training passes the cached one
    with torch.no_grad():
        torch.testing.assert_close(model(z, 3, extrapolation=ext), body(z, 3, extrapolation=ext))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(model.head_parameters())
    with pytest.raises(ValueError, match="not 'convlstm'"):
        model.load_initial_state(state, "convlstm")
    other_sizes = get_model(NAME, hidden=(8, 8), kernel=3, patch=4, ceiling=True)
    with pytest.raises(ValueError, match="convlstm_sprog's weights do not fit"):
        other_sizes.load_initial_state(state, "convlstm_sprog")
    with pytest.raises(ValueError, match="half-widths of square neighbourhoods"):
        get_model(NAME, hidden=(8, 8), scales=(0, -2))


def test_training_fits_the_head_alone_on_the_cross_entropy_over_observed_pixels() -> None:
    kwargs = {"hidden": [48, 48], "kernel": 3, "patch": 4, "ceiling": True}
    module = NowcastModule(model=NAME, model_kwargs=kwargs, t_in=4, t_out=2,
                           init_weights=str(WEIGHTS_DIR / "convlstm_sprog_taasrad19.ckpt"))
    torch.manual_seed(0)
    targets = torch.rand(2, 2, 1, 16, 16) * 0.5
    mask = torch.ones_like(targets, dtype=torch.bool)
    mask[..., :8] = False
    batch = {"inputs": torch.rand(2, 4, 1, 16, 16) * 0.5, "targets": targets, "target_mask": mask,
             "extrapolation": torch.rand(2, 2, 1, 16, 16) * 0.5}
    loss, forecast = module._own_loss(batch)
    assert forecast.shape == (2, 2, 1, 16, 16) and torch.isfinite(loss) and loss > 0
    changed = dict(batch, targets=torch.where(mask, targets, torch.ones_like(targets)))
    torch.testing.assert_close(module._own_loss(changed)[0], loss)  # masked pixels do not count
    other = dict(batch, extrapolation=batch["extrapolation"] * 0.0)
    assert not torch.equal(module._own_loss(other)[1], forecast)  # the cached extrapolation is read
    loss.backward()
    grads = {n: p.grad for n, p in module.net.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in ("own_weight", "first_bias"))
    assert all(g is None for n, g in grads.items() if n not in module.net.head_parameters())
    with pytest.raises(CheckpointMismatch, match="starts from a convlstm_sprog"):
        NowcastModule(model=NAME, model_kwargs=kwargs, t_in=4, t_out=2,
                      init_weights=str(WEIGHTS_DIR / "convlstm_taasrad19.ckpt"))



def test_the_shipped_weights_forecast_probabilities_of_a_real_sample() -> None:
    forecaster = load_forecaster(NAME)
    assert forecaster.outputs == ["deterministic", "probability"]
    frames = taasrad19_frames()
    p = forecaster.predict_probabilities(frames, 6, THRESHOLDS)
    assert p.shape == (6, len(THRESHOLDS), 64, 64)
    nodata = np.isnan(frames[-1])
    assert nodata.mean() > 0.1 and np.isnan(p[:, :, nodata]).all(), "nodata stays nodata"
    valid = p[:, :, ~nodata]
    assert np.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1
    assert (np.diff(valid, axis=1) <= 1e-6).all(), "a higher threshold is never more likely"
    assert valid[0, 1].max() > 0.5 and (valid[:, -1] == 0).all()  # it rains now; nothing above 100 mm/h
    forecast = forecaster.predict(frames, 6)
    assert np.array_equal(np.isnan(forecast), np.broadcast_to(nodata, forecast.shape))
    assert np.isfinite(forecast[:, ~nodata]).all() and forecast[:, ~nodata].min() >= 0
