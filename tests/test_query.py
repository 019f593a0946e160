"""The archive query API: UTC times, windows that never span a gap, one window read with its errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from pipelines.query import (
    WindowUnavailable,
    check_step,
    contiguous_starts,
    parse_utc,
    plan_windows,
    time_step_minutes,
    utc_text,
)
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames


@pytest.fixture
def gappy(store: str) -> ProductArchive:
    """A 5-min product from 12:00 with frames 10 and 23-24 missing."""
    archive = ProductArchive(store, "synth")
    archive.write(synthetic_frames(n_frames=40, shape=(48, 64), skip={10, 23, 24}))
    return archive


@pytest.mark.parametrize("text", ["2021-07-01T12:05:00Z", "2021-07-01T12:05:00", "2021-07-01T14:05:00+02:00",
                                  "2021-07-01 12:05z"])
def test_parse_utc_reads_iso_text_in_any_offset(text: str) -> None:
    assert parse_utc(text) == np.datetime64("2021-07-01T12:05:00")


def test_parse_utc_takes_aware_naive_and_numpy_times_and_refuses_junk() -> None:
    aware = datetime(2021, 7, 1, 13, 5, tzinfo=timezone(timedelta(hours=1)))
    assert parse_utc(aware) == parse_utc(datetime(2021, 7, 1, 12, 5)) == parse_utc(np.datetime64("2021-07-01T12:05"))
    assert parse_utc(None) is None
    with pytest.raises(ValueError, match="'yesterday' is not an ISO time"):
        parse_utc("yesterday")
    assert utc_text(np.datetime64("2021-07-01T12:05:00.000")) == "2021-07-01T12:05:00Z"


def test_windows_skip_gaps_and_honour_range_and_every(gappy: ProductArchive) -> None:
    times = gappy.times()
    assert time_step_minutes(times) == 5.0 == gappy.step_minutes()
    all_windows = plan_windows(times, history=4, lead_steps=2)
    # runs of 10, 12 and 15 contiguous frames hold 10-5, 12-5 and 15-5 windows of 6
    assert len(all_windows) == 5 + 7 + 10
    for start, init in zip(all_windows.starts, all_windows.inits, strict=True):
        span = times[start : start + 6]
        assert np.all(np.diff(span) == np.timedelta64(300, "s")) and init == span[3]
    ranged = plan_windows(times, 4, 2, start="2021-07-01T13:00Z", end="2021-07-01T14:00:00Z", every=3)
    assert ranged.inits.min() >= np.datetime64("2021-07-01T13:00") and ranged.inits.max() <= np.datetime64(
        "2021-07-01T14:00")
    inside = all_windows.inits[(all_windows.inits >= np.datetime64("2021-07-01T13:00"))
                               & (all_windows.inits <= np.datetime64("2021-07-01T14:00"))]
    assert ranged.inits.tolist() == inside[::3].tolist()
    assert not len(plan_windows(times[:1], 1))  # one frame has no step
    # runs start at stored indices 0, 10 and 22 (frames 0-9, 11-22, 25-39)
    assert contiguous_starts(times, 11, 5.0).tolist() == [10, 11, 22, 23, 24, 25, 26]


def test_a_window_is_the_frames_up_to_its_end_inside_its_box(gappy: ProductArchive) -> None:
    latest = gappy.window(4)
    assert latest.frames.shape == (4, 48, 64) and latest.end == gappy.times()[-1]
    grid = gappy.grid()
    box = [grid.x[10], grid.y[30], grid.x[19], grid.y[20]]  # y runs north to south
    boxed = gappy.window(3, end="2021-07-01T12:40:00Z", bbox=box)
    assert boxed.frames.shape == (3, 11, 10) and boxed.grid.shape == (11, 10)
    np.testing.assert_array_equal(boxed.frames, latest_frames(gappy, "2021-07-01T12:40:00", 3)[:, 20:31, 10:20])
    needs_more = gappy.window(end="2021-07-01T12:40:00Z", frames_needed=lambda step: int(30 / step))
    assert len(needs_more.frames) == 6


def latest_frames(archive: ProductArchive, end: str, n: int) -> np.ndarray:
    with archive.open() as ds:
        i = int(np.nonzero(ds["time"].values.astype("datetime64[s]") == np.datetime64(end))[0][0])
        return ds["precip"].isel(time=slice(i - n + 1, i + 1)).values


@pytest.mark.parametrize(("end", "length", "bbox", "code"), [
    ("2021-07-01T12:50:00Z", 3, None, "time_not_in_archive"),  # frame 10 is missing
    ("2021-07-01T12:55:00Z", 3, None, "gap_in_archive"),
    ("2021-07-01T12:10:00Z", 5, None, "too_few_frames"),
    (None, 3, [1e9, 1e9, 2e9, 2e9], "empty_bbox"),
])
def test_window_errors_name_the_problem(gappy: ProductArchive, end, length, bbox, code: str) -> None:
    with pytest.raises(WindowUnavailable) as caught:
        gappy.window(length, end=end, bbox=bbox)
    assert caught.value.code == code
    assert {"time_not_in_archive": "is not a frame of 'synth'", "gap_in_archive": "are not contiguous",
            "too_few_frames": "'synth' has fewer than 5 frames", "empty_bbox": "does not overlap"}[code] in str(
        caught.value)


def test_steps_far_from_the_model_are_refused_near_ones_resampled() -> None:
    check_step(10.0, 5.0, "convlstm")
    check_step(2.0, 5.0, "convlstm")
    check_step(60.0, None, "persistence")  # baselines take any step
    with pytest.raises(WindowUnavailable, match="works at 5-minute steps") as caught:
        check_step(60.0, 5.0, "convlstm")
    assert caught.value.code == "wrong_step"
