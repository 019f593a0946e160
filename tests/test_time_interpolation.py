"""Bringing a product at another time step to a 5-minute network: motion-compensated interpolation
against the per-pixel linear one, on real radar."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import sample_files

from pipelines.time_interpolation import (
    interpolate_along_motion,
    interpolate_in_time,
    interpolate_linear,
    motion_per_minute,
)


@cache
def real_radar() -> np.ndarray:
    """The first 12 MeteoSwiss frames of the sample product (mm/h, NaN outside the composite)."""
    from pipelines.ingest import decode

    return np.stack([decode(path, "mch_gif").rain_rate for path in sample_files("mch", 12)]).astype(np.float32)


def translated(frame: np.ndarray, shifts: list[int]) -> np.ndarray:
    """[1, T, H, W]: ``frame`` moved ``shift`` pixels to the east (x) and half that to the south per frame."""
    return np.stack([np.roll(frame, (s // 2, s), axis=(0, 1)) for s in shifts])[None]


def test_a_moving_field_is_interpolated_where_it_is_not_ghosted() -> None:
    """Real rain carried 8 px east and 4 px south per 10 minutes: at 5 minutes the motion-compensated
    frame is the rain carried 4 and 2 px; the linear one shows it twice, faded."""
    radar = real_radar()
    frame = np.nan_to_num(radar[6], nan=0.0)[100:400, 150:450]
    ten_minutes = translated(frame, [0, 8, 16])
    truth = translated(frame, [12])[0, 0]  # half way between the last two frames
    inner = (slice(30, -30), slice(30, -30))  # clear of the edges the roll wraps around
    errors, csi = {}, {}
    for method in ("motion", "linear"):
        at_five = interpolate_in_time(ten_minutes, 10.0, np.array([-5.0]), method=method)[0, 0]
        errors[method] = np.nanmean(np.abs(at_five[inner] - truth[inner]))
        hits = ((at_five >= 1) & (truth >= 1))[inner].sum()
        csi[method] = hits / ((at_five >= 1) | (truth >= 1))[inner].sum()
    assert errors["motion"] < 0.5 * errors["linear"], errors
    assert csi["motion"] > 0.85 and csi["motion"] > csi["linear"] + 0.05, csi


def test_on_a_real_ten_minute_product_the_dropped_frames_come_back_closer() -> None:
    """Every other real 5-minute frame dropped, then recovered from its neighbours: the motion-
    compensated recovery is nearer the real frame than the linear one at every dropped time."""
    radar = real_radar()[:9, 150:550, 150:600]
    ten_minutes = radar[None, ::2]  # 5 frames, 10 minutes apart
    dropped = radar[1::2]  # the real frames at -35, -25, -15 and -5 minutes
    times = np.array([-35.0, -25.0, -15.0, -5.0])
    for k, recovered in enumerate(zip(interpolate_along_motion(ten_minutes, 10.0, times)[0],
                                      interpolate_linear(ten_minutes, 10.0, times)[0], strict=True)):
        motion, linear = (np.nanmean(np.abs(r - dropped[k])) for r in recovered)
        assert motion < linear, (k, motion, linear)


def test_nodata_stays_nodata_and_times_outside_the_frames_are_refused() -> None:
    radar = real_radar()[:3, 200:328, 200:328].copy()
    radar[:, :, :20] = np.nan  # a strip outside the composite on every frame
    out = interpolate_in_time(radar[None], 10.0, np.array([-15.0, -5.0, 0.0]))
    assert out.shape == (1, 3, 128, 128) and out.dtype == np.float32
    assert np.isnan(out[0, :, :, :10]).all(), "deep inside the strip nobody observed anything"
    assert np.isfinite(out[0, :, :, 40:]).all()
    np.testing.assert_array_equal(out[0, 2], radar[2])  # a time on a frame is that frame
    with pytest.raises(ValueError, match="outside"):
        interpolate_in_time(radar[None], 10.0, np.array([-25.0]))
    with pytest.raises(ValueError, match="time interpolation must be one of motion, linear"):
        interpolate_in_time(radar[None], 10.0, np.array([-5.0]), method="cubic")
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        motion_per_minute(radar[None, -1:], 10.0)


def test_a_resampled_sprog_hybrid_starts_from_s_prog_run_at_the_products_own_step() -> None:
    """An untrained hybrid is its baseline. Given a 15-minute product, ``convlstm_sprog`` must give at
    15 and 30 min what S-PROG gives run natively on those 15-minute frames (S-PROG's AR(2) fitted on
    resampled 5-minute history is a weaker forecast), and it asks for the 3 frames that needs. An
    optical-flow hybrid, whose baseline fits nothing in time, reads the resampled history."""
    from nowcast.forecaster import LoadedForecaster, load_forecaster
    from nowcast.models import get_model
    from pipelines.normalization import RainNormalizer

    radar = real_radar()[::3, 150:278, 250:378]  # 4 frames, 15 minutes apart
    normalizer = RainNormalizer()
    untrained = {name: LoadedForecaster(name, get_model(name, hidden=(8,), kernel=3, patch=4,
                                                        normalization=normalizer.to_dict()).eval(),
                                        4, 12, 5.0, normalizer, "untrained")
                 for name in ("convlstm_sprog", "convlstm_flow")}
    assert untrained["convlstm_sprog"].frames_needed(15.0) == 3  # the network alone needs 2 (15 min)
    assert untrained["convlstm_flow"].frames_needed(15.0) == 2
    frames = radar[-3:]
    forecast = untrained["convlstm_sprog"].predict(frames, 2, step_minutes=15.0)
    native = load_forecaster("sprog").predict(frames, 2)
    covered = np.isfinite(native)
    assert np.mean(native[covered] >= 1.0) > 0.01, "pick a rainy crop"
    np.testing.assert_allclose(forecast[covered], native[covered], atol=1e-3)
    flow = untrained["convlstm_flow"].predict(frames[-2:], 2, step_minutes=15.0)
    assert not np.allclose(flow[covered], load_forecaster("optical_flow").predict(frames, 2)[covered], atol=1e-3)
