"""Pooled per-lead verification scores on small synthetic fields (pure scoring, no data needed)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from nowcast.verification import THRESHOLDS_MM_H, LeadTimeVerifier, scores_table_markdown

with contextlib.redirect_stdout(io.StringIO()):
    from pysteps.verification.spatialscores import fss as pysteps_fss


def _rain_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Mostly dry field with rain up to ~40 mm/h, so every threshold has events."""
    rain = rng.gamma(0.6, 6.0, size=shape)
    rain[rng.random(shape) < 0.4] = 0.0
    rain[..., 0, 0] = 45.0  # at least one heavy-rain pixel per field
    return rain


def _blob(shape: tuple[int, int], top: int, left: int, size: int, value: float = 3.0) -> np.ndarray:
    field = np.zeros(shape)
    field[top:top + size, left:left + size] = value
    return field


def test_perfect_forecast() -> None:
    rng = np.random.default_rng(0)
    obs = _rain_field(rng, (3, 40, 50))
    verifier = LeadTimeVerifier(n_leads=3, step_minutes=5, pixel_size_km=1.0)
    verifier.accumulate(obs.copy(), obs)
    verifier.accumulate(obs[::-1].copy(), obs[::-1].copy())
    for row in verifier.result():
        assert row["n_cases"] == 2
        assert row["mae_mm_h"] == 0.0
        assert row["fss_1mm_10km"] == pytest.approx(1.0)
        for t in THRESHOLDS_MM_H:
            k = str(t)
            assert row["hits"][k] > 0, "test field should have events at every threshold"
            assert row["misses"][k] == row["false_alarms"][k] == 0
            assert row["csi"][k] == row["pod"][k] == 1.0
            assert row["far"][k] == 0.0


def test_counts_are_pooled_not_averaged() -> None:
    # threshold 1 mm/h; case A: 1 hit; case B: 1 hit + 3 misses
    obs_a = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    fct_a = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    obs_b = np.array([[[2.0, 2.0, 2.0], [2.0, 0.0, 0.0]]])
    fct_b = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    verifier = LeadTimeVerifier(n_leads=1, step_minutes=10, pixel_size_km=1.0, thresholds=(1.0,))
    verifier.accumulate(fct_a, obs_a)
    verifier.accumulate(fct_b, obs_b)
    (row,) = verifier.result()
    assert row["n_cases"] == 2
    assert row["hits"] == {"1.0": 2}
    assert row["misses"] == {"1.0": 3}
    assert row["false_alarms"] == {"1.0": 0}
    assert all(isinstance(row[c]["1.0"], int) for c in ("hits", "misses", "false_alarms"))
    assert row["csi"]["1.0"] == pytest.approx(2 / 5)
    assert row["csi"]["1.0"] != pytest.approx((1.0 + 0.25) / 2)  # the mean of per-case CSIs
    assert row["pod"]["1.0"] == pytest.approx(2 / 5)
    assert row["far"]["1.0"] == 0.0
    assert row["mae_mm_h"] == pytest.approx(3 * 2.0 / 12)


def test_event_is_value_at_or_above_threshold() -> None:
    obs = np.array([[[1.0, 0.99]]])
    fct = np.array([[[1.0, 1.0]]])
    verifier = LeadTimeVerifier(n_leads=1, step_minutes=5, pixel_size_km=1.0, thresholds=(1.0,))
    verifier.accumulate(fct, obs)
    (row,) = verifier.result()
    assert (row["hits"]["1.0"], row["misses"]["1.0"], row["false_alarms"]["1.0"]) == (1, 0, 1)


def test_nan_pixels_are_ignored() -> None:
    rng = np.random.default_rng(1)
    obs = _rain_field(rng, (2, 30, 30))
    fct = _rain_field(rng, (2, 30, 30))
    obs[rng.random(obs.shape) < 0.1] = np.nan
    fct[rng.random(fct.shape) < 0.1] = np.nan
    # a nodata observation under heavy forecast rain must not become a false alarm
    obs[0, 0, 0], fct[0, 0, 0] = np.nan, 50.0
    # a nodata forecast over heavy observed rain must not become a miss
    obs[1, 0, 0], fct[1, 0, 0] = 50.0, np.nan

    verifier = LeadTimeVerifier(n_leads=2, step_minutes=5, pixel_size_km=1.0)
    verifier.accumulate(fct, obs)
    for lead, row in enumerate(verifier.result()):
        valid = np.isfinite(fct[lead]) & np.isfinite(obs[lead])
        f, o = fct[lead][valid], obs[lead][valid]
        assert row["mae_mm_h"] == pytest.approx(np.mean(np.abs(f - o)))
        for t in THRESHOLDS_MM_H:
            k = str(t)
            assert row["hits"][k] == np.sum((f >= t) & (o >= t))
            assert row["misses"][k] == np.sum((f < t) & (o >= t))
            assert row["false_alarms"][k] == np.sum((f >= t) & (o < t))
        # FSS: nodata on either side counts as dry on both sides
        f0 = np.where(valid, fct[lead], 0.0)
        o0 = np.where(valid, obs[lead], 0.0)
        assert row["fss_1mm_10km"] == pytest.approx(pysteps_fss(f0, o0, 1.0, 10))
        assert all(v is None or np.isfinite(v) for v in (row["mae_mm_h"], row["fss_1mm_10km"]))


def test_undefined_scores_are_none() -> None:
    rng = np.random.default_rng(2)
    obs = rng.uniform(0, 5, size=(1, 20, 20))
    fct = rng.uniform(0, 5, size=(1, 20, 20))
    fct[0, 0, 0] = 12.0  # a forecast-only event at 10 mm/h: FAR = 1, POD undefined
    verifier = LeadTimeVerifier(n_leads=1, step_minutes=5, pixel_size_km=1.0)
    verifier.accumulate(fct, obs)
    (row,) = verifier.result()
    assert row["csi"]["30.0"] is None and row["pod"]["30.0"] is None and row["far"]["30.0"] is None
    assert (row["hits"]["30.0"], row["misses"]["30.0"], row["false_alarms"]["30.0"]) == (0, 0, 0)
    assert row["pod"]["10.0"] is None
    assert row["far"]["10.0"] == 1.0
    assert row["csi"]["10.0"] == 0.0
    json.dumps(row, allow_nan=False)  # no NaN anywhere


def test_no_valid_data_gives_none_not_nan() -> None:
    verifier = LeadTimeVerifier(n_leads=2, step_minutes=5, pixel_size_km=1.0)
    nan = np.full((2, 8, 8), np.nan)
    verifier.accumulate(nan, nan)
    for row in verifier.result():
        assert row["n_cases"] == 0
        assert row["mae_mm_h"] is None and row["fss_1mm_10km"] is None
    json.dumps(verifier.result(), allow_nan=False)


def test_fss_shifted_forecast() -> None:
    shape = (60, 60)
    obs = _blob(shape, 20, 20, 12)
    fct = _blob(shape, 23, 24, 12)  # displaced by 3 and 4 pixels
    scores = {}
    for window_km in (1.0, 10.0):
        verifier = LeadTimeVerifier(n_leads=1, step_minutes=5, pixel_size_km=1.0, fss_window_km=window_km)
        verifier.accumulate(fct[None], obs[None])
        scores[window_km] = verifier.result()[0]["fss_1mm_10km"]
    assert scores[1.0] < scores[10.0] < 1.0
    assert scores[10.0] == pytest.approx(pysteps_fss(fct, obs, 1.0, 10))
    assert scores[1.0] == pytest.approx(pysteps_fss(fct, obs, 1.0, 1))
    # at 1 px the FSS is 2*overlap / (n_f + n_o) with overlap 9*8 and 144 pixels in each blob
    assert scores[1.0] == pytest.approx(2 * 72 / 288)


def test_fss_window_from_pixel_size() -> None:
    assert LeadTimeVerifier(1, 5, pixel_size_km=1.0).fss_window_px == 10
    assert LeadTimeVerifier(1, 5, pixel_size_km=2.0).fss_window_px == 5
    assert LeadTimeVerifier(1, 5, pixel_size_km=4.0).fss_window_px == 3  # 2.5 rounds up
    assert LeadTimeVerifier(1, 5, pixel_size_km=25.0).fss_window_px == 1


def test_lead_minutes() -> None:
    verifier = LeadTimeVerifier(n_leads=4, step_minutes=7.5, pixel_size_km=1.0)
    assert [row["lead_minutes"] for row in verifier.result()] == [7.5, 15.0, 22.5, 30.0]


def test_shape_mismatch_is_rejected() -> None:
    verifier = LeadTimeVerifier(n_leads=2, step_minutes=5, pixel_size_km=1.0)
    with pytest.raises(ValueError):
        verifier.accumulate(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError):
        verifier.accumulate(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_markdown_table() -> None:
    rng = np.random.default_rng(3)
    results = {}
    for name in ("persistence", "unet"):
        verifier = LeadTimeVerifier(n_leads=3, step_minutes=5, pixel_size_km=1.0)
        verifier.accumulate(_rain_field(rng, (3, 20, 20)), _rain_field(rng, (3, 20, 20)))
        results[name] = verifier.result()
    results["unet"][0]["csi"]["5.0"] = None

    table = scores_table_markdown(results)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| model | lead (min) |") and "MAE" in lines[0] and "FSS" in lines[0]
    assert set(lines[1].replace("|", "")) == {"-"}
    body = lines[2:]
    assert len(body) == 2 * 3
    assert body[0].startswith("| persistence | 5 |")
    assert body[3].startswith("| unet | 5 | ")
    assert body[3].split("|")[4].strip() == "-"
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in body)
    mae = results["persistence"][1]["mae_mm_h"]
    assert f"{mae:.3f}" in body[1]


def test_training_and_verification_count_csi_the_same_way() -> None:
    """The validation CSI a run logs, the soft-CSI loss at a sharp temperature and the verifier's CSI agree."""
    import torch

    from nowcast.contingency import contingency, csi
    from nowcast.losses import soft_csi

    rng = np.random.default_rng(3)
    observed = rng.gamma(0.5, 2.0, size=(4, 40, 40))
    forecast = np.clip(observed + rng.normal(0, 1.5, size=observed.shape), 0, None)
    observed[:, :5] = np.nan  # nodata rows: left out on both sides
    verifier = LeadTimeVerifier(4, 5.0, 1.0, thresholds=(1.0,))
    verifier.accumulate(forecast, observed)
    expected = [row["csi"]["1.0"] for row in verifier.result()]

    valid = torch.from_numpy(np.isfinite(observed)).float()[None, :, None]
    f = torch.from_numpy(forecast).float()[None, :, None]
    o = torch.from_numpy(np.nan_to_num(observed)).float()[None, :, None]
    hard = csi(*contingency((f >= 1.0).float(), (o >= 1.0).float(), valid, (0, 2, 3, 4)))
    np.testing.assert_allclose(hard.numpy(), expected, rtol=1e-6)
    soft = soft_csi(f, o, valid, 1.0 - 1e-4, temperature=1e-6)  # a sigmoid this sharp is a step
    assert abs(float(soft) - (1 - np.mean(expected))) < 1e-4
