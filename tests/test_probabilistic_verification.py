"""Probabilistic scores against hand-checked cases: forecasts of certainty on a known field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nowcast.ensembles import exceedance_probabilities
from nowcast.probabilistic_verification import ProbabilisticVerifier
from pipelines.pysteps_import import quiet_import


def known_field() -> np.ndarray:
    """Two leads of 4 x 5 pixels: the top two rows at 6 mm/h (10 of 20 pixels), the rest dry; one pixel of
    lead 0 is nodata."""
    observed = np.zeros((2, 4, 5))
    observed[:, :2] = 6.0
    observed[0, 3, 4] = np.nan
    return observed


def test_a_certain_and_right_forecast_scores_perfectly() -> None:
    observed = known_field()
    verifier = ProbabilisticVerifier(2, 5.0)
    verifier.accumulate(observed, members=np.repeat(np.nan_to_num(observed)[None], 3, axis=0))
    lead = verifier.result()[1]
    assert lead["crps"] == 0.0 and lead["n_cases"] == 1
    for key in ("1.0", "5.0"):  # half the pixels are events: uncertainty 0.5 * 0.5
        assert lead["brier"][key] == 0.0 and lead["brier_reliability"][key] == 0.0
        assert lead["brier_resolution"][key] == pytest.approx(0.25)
        assert lead["brier_uncertainty"][key] == pytest.approx(0.25)
        assert lead["brier_skill"][key] == pytest.approx(1.0)
        assert lead["roc_area"][key] == pytest.approx(1.0)
    assert lead["roc_area"]["10.0"] is None  # never observed: POD undefined
    assert lead["brier"]["10.0"] == 0.0 and lead["brier_skill"]["10.0"] is None
    diagram = lead["reliability_diagram"]["5.0"]
    assert diagram["count"][0] == 10 and diagram["count"][-1] == 10
    assert diagram["observed_frequency"][0] == 0.0 and diagram["observed_frequency"][-1] == 1.0


def test_a_certain_and_wrong_forecast() -> None:
    """Certain of no rain: BS = the event fraction 0.5 = REL 0.25 - RES 0 + UNC 0.25; CRPS = mean |0 - obs|
    = 3 mm/h; ROC area 0.5 (no discrimination)."""
    observed = known_field()
    verifier = ProbabilisticVerifier(2, 5.0)
    verifier.accumulate(observed, probabilities=np.zeros((2, 3, 4, 5)))
    lead = verifier.result()[1]
    assert lead["crps"] is None  # no members, no CRPS
    assert lead["brier"]["5.0"] == pytest.approx(0.5)
    assert lead["brier_reliability"]["5.0"] == pytest.approx(0.25)
    assert lead["brier_resolution"]["5.0"] == pytest.approx(0.0)
    assert lead["roc_area"]["5.0"] == pytest.approx(0.5)
    members = ProbabilisticVerifier(2, 5.0)
    members.accumulate(observed, members=np.zeros((3, 2, 4, 5)))
    assert members.result()[1]["crps"] == pytest.approx(3.0)
    # lead 0 leaves its nodata pixel (a dry one) out: 10 of 19 pixels at 6 mm/h
    assert members.result()[0]["crps"] == pytest.approx(10 * 6.0 / 19)


def test_pooled_records_give_the_scores_of_all_cases_at_once() -> None:
    observed = known_field()
    right = np.repeat(np.nan_to_num(observed)[None], 2, axis=0)
    wrong = np.zeros((2, 2, 4, 5))
    together = ProbabilisticVerifier(2, 5.0)
    together.accumulate(observed, members=right)
    together.accumulate(observed, members=wrong)
    pooled = ProbabilisticVerifier(2, 5.0)
    for members in (right, wrong):
        single = ProbabilisticVerifier(2, 5.0)
        single.accumulate(observed, members=members)
        pooled.merge_state(json.loads(json.dumps(single.state())))
    assert pooled.result() == together.result()
    assert together.result()[1]["crps"] == pytest.approx(1.5)


def test_a_one_member_ensembles_crps_is_its_mae_on_real_radar() -> None:
    """Why evaluate reports a deterministic model's MAE as its CRPS: pysteps' CRPS says so."""
    from conftest import sample_files

    importer = quiet_import("pysteps.io").get_method("fmi_pgm", "importer")
    fields = [importer(str(path), gzipped=True)[0] for path in sample_files("fmi", 2)]
    dbz = np.stack(fields)[:, 300:400, 600:700]
    rain = np.where(np.isfinite(dbz), (10 ** (dbz / 10) / 200) ** (1 / 1.6), np.nan)
    forecast, observed = rain[0], rain[1]
    crps = quiet_import("pysteps.verification.probscores").CRPS(forecast[None], observed)
    assert crps == pytest.approx(np.nanmean(np.abs(forecast - observed)))


def test_exceedance_probabilities_count_members_at_or_above() -> None:
    members = np.array([0.0, 1.0, 1.0, 5.0])[:, None, None, None] * np.ones((4, 2, 1, 2))  # [M, L, H, W]
    members[:, :, 0, 1] = np.nan  # nodata
    p = exceedance_probabilities(members, [1.0, 5.0])
    assert p.shape == (2, 2, 1, 2)  # [L, K, H, W]
    np.testing.assert_allclose(p[:, 0, 0, 0], 0.75)
    np.testing.assert_allclose(p[:, 1, 0, 0], 0.25)
    assert np.isnan(p[..., 1]).all()
