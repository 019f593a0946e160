"""Probability matching (nowcast.postprocessing) on real radar: the forecast keeps its ranks and takes
the last observation's distribution; nodata stays nodata, dry stays dry."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sample_files
from scipy.ndimage import gaussian_filter

from nowcast.forecaster import load_forecaster
from nowcast.postprocessing import match_cdf


def _fmi_frames(count: int) -> np.ndarray:
    from pipelines.ingest import decode

    return np.stack([decode(p, "fmi_pgm").rain_rate for p in sample_files("fmi", count)]).astype(np.float32)


def test_a_blurred_forecast_gets_the_observed_distribution_back_in_its_own_ranks() -> None:
    frames = _fmi_frames(6)
    observed = frames[-1]
    covered = np.isfinite(observed)
    blurred = np.stack([gaussian_filter(np.nan_to_num(observed), sigma) for sigma in (1.0, 4.0)])
    blurred[:, ~covered] = np.nan
    matched = match_cdf(blurred, observed)
    assert np.isnan(matched[:, ~covered]).all()  # nodata is not made dry
    for lead in range(2):
        np.testing.assert_allclose(np.sort(matched[lead][covered]), np.sort(observed[covered]), rtol=0, atol=0)
        order = np.argsort(blurred[lead][covered], kind="stable")
        assert (np.diff(matched[lead][covered][order]) >= 0).all()  # ranks kept
    # the blur flattened the cores; matching gives the heaviest observed rain back, at the blur's peak
    assert blurred[1][covered].max() < 0.5 * observed[covered].max()
    peak = np.unravel_index(np.nanargmax(blurred[1]), observed.shape)
    assert matched[1][peak] == observed[covered].max()


def test_dry_forecast_pixels_stay_dry_and_a_smaller_wet_area_is_kept() -> None:
    observed = _fmi_frames(1)[0]
    covered = np.isfinite(observed)
    forecast = np.where(observed >= 2.0, observed, 0.0)[None]  # wet over fewer pixels than observed
    forecast[:, ~covered] = np.nan
    matched = match_cdf(forecast, observed)
    assert (matched[forecast == 0] == 0).all()
    assert ((matched > 0) == (forecast > 0)).all()
    assert np.isnan(matched[:, ~covered]).all()
    np.testing.assert_array_equal(match_cdf(forecast, np.where(covered, 0.0, np.nan))[:, covered], 0.0)
    with pytest.raises(ValueError, match="not on the same grid"):
        match_cdf(forecast, observed[:-1])


def test_a_forecaster_matches_on_request_or_by_its_checkpoint_and_refuses_an_unknown_method(
        small_checkpoint) -> None:
    frames = _fmi_frames(8)[:, 300:428, 200:328]
    frames[:, :, :10] = np.nan
    raw = load_forecaster("optical_flow").predict(frames[:4], 3)
    matched = load_forecaster("optical_flow", probability_matching="cdf").predict(frames[:4], 3)
    np.testing.assert_array_equal(match_cdf(raw, frames[3]), matched)
    assert not np.array_equal(np.nan_to_num(raw), np.nan_to_num(matched))
    network = load_forecaster(str(small_checkpoint))
    assert network.probability_matching == "none"  # a checkpoint trained without a choice
    assert load_forecaster(str(small_checkpoint), probability_matching="cdf").probability_matching == "cdf"
    with pytest.raises(ValueError, match="probability matching must be one of none, cdf, cdf_wet, got 'quantile'"):
        load_forecaster("sprog", probability_matching="quantile")


def test_wet_area_matching_keeps_the_area_at_1_mm_h_and_gives_the_cores_back() -> None:
    from nowcast.postprocessing import WET_THRESHOLD, match_cdf_wet, post_process

    observed = _fmi_frames(6)[-1]
    covered = np.isfinite(observed)
    blurred = np.stack([gaussian_filter(np.nan_to_num(observed), sigma) for sigma in (1.0, 4.0)])
    blurred[:, ~covered] = np.nan
    matched = match_cdf_wet(blurred, observed)
    np.testing.assert_array_equal(post_process("cdf_wet", blurred, observed), matched)
    assert np.isnan(matched[:, ~covered]).all()
    heavy = np.sort(observed[covered & (observed >= WET_THRESHOLD)])
    for lead in range(2):
        wet = covered & (blurred[lead] >= WET_THRESHOLD)
        np.testing.assert_array_equal(matched[lead] >= WET_THRESHOLD, blurred[lead] >= WET_THRESHOLD)  # same area
        np.testing.assert_array_equal(matched[lead][~wet & covered], blurred[lead][~wet & covered])  # below: as was
        order = np.argsort(blurred[lead][wet], kind="stable")
        assert (np.diff(matched[lead][wet][order]) >= 0).all()  # ranks kept
        # the heaviest and lightest of the area take the observation's extremes above the threshold
        assert matched[lead][wet].max() == heavy[-1] and matched[lead][wet].min() == heavy[0]
    assert blurred[1][covered].max() < 0.5 * observed[covered].max()
    # an observation without rain at the threshold leaves the forecast as it was
    drizzle = np.where(covered, np.minimum(np.nan_to_num(observed), 0.5), np.nan)
    np.testing.assert_array_equal(match_cdf_wet(blurred, drizzle), blurred)
    with pytest.raises(ValueError, match="not on the same grid"):
        match_cdf_wet(blurred, observed[:-1])
    with pytest.raises(ValueError, match="cdf_wet"):
        post_process("cdf_dry", blurred, observed)
