"""Asking the archive for frames: UTC times, a product's step, contiguous windows, one window read.

Evaluation, backfill, the promotion check, the service and the command line all ask the same
questions of a product ("which init times have enough history without a gap?", "give me the
N frames up to time T inside this box"); this module is the one answer. Times are UTC
``datetime64[s]``; a window is ``length`` frames exactly one product step apart, so it never
spans a gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipelines.grid import Grid

#: how far a product's step may be from a network's before resampling in time stops making sense
MAX_STEP_RATIO = 4.0


class WindowUnavailable(ValueError):
    """The archive cannot give the window asked for; ``code`` says why in one word (an API error code)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def parse_utc(value: str | datetime | np.datetime64 | None) -> np.datetime64 | None:
    """A UTC time as ``datetime64[s]``: ISO text with or without ``Z``/offset, an aware or naive
    (taken as UTC) datetime, or a datetime64. None stays None."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        return value.astype("datetime64[s]")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO time such as 2016-09-28T15:00:00Z") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(value, "s")


def utc_text(time: np.datetime64) -> str:
    """``2016-09-28T15:00:00Z``: how reports and responses write a time."""
    return str(np.datetime64(time, "s")) + "Z"


def time_step_minutes(times: np.ndarray) -> float | None:
    """The product's step: the most common spacing between consecutive frames (None below two frames)."""
    if len(times) < 2:
        return None
    diffs = np.diff(times.astype("datetime64[s]")).astype(np.int64)
    values, counts = np.unique(diffs, return_counts=True)
    return float(values[np.argmax(counts)]) / 60.0


def contiguous_starts(times: np.ndarray, length: int, step_minutes: float) -> np.ndarray:
    """Indices where ``length`` frames follow each other at exactly ``step_minutes``."""
    seconds = times.astype("datetime64[s]").astype(np.int64)
    n = len(seconds) - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(n)
    span = seconds[starts + length - 1] - seconds[starts]
    return starts[span == (length - 1) * int(round(step_minutes * 60))]


@dataclass(frozen=True)
class Windows:
    """Planned windows: ``starts`` index each window's first frame, ``inits`` the time of its
    last history frame (a forecast's init time)."""

    starts: np.ndarray
    inits: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def plan_windows(
    times: np.ndarray, history: int, lead_steps: int = 0, step_minutes: float | None = None,
    start: str | datetime | np.datetime64 | None = None, end: str | datetime | np.datetime64 | None = None,
    every: int = 1,
) -> Windows:
    """Windows of ``history`` frames then ``lead_steps`` more, all contiguous, whose init time lies
    in ``[start, end]`` (either open), every ``every``-th of them."""
    step = step_minutes if step_minutes is not None else time_step_minutes(times)
    if step is None:
        return Windows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype="datetime64[s]"))
    starts = contiguous_starts(times, history + lead_steps, step)
    inits = times[starts + history - 1].astype("datetime64[s]")
    first, last = parse_utc(start), parse_utc(end)
    keep = np.ones(len(starts), dtype=bool)
    if first is not None:
        keep &= inits >= first
    if last is not None:
        keep &= inits <= last
    every = max(1, every)
    return Windows(starts[keep][::every], inits[keep][::every])


def check_step(product_step: float, model_step: float | None, model: str) -> None:
    """Other steps are resampled in time; only ones too far from the model's are refused."""
    if model_step is None:
        return
    low, high = model_step / MAX_STEP_RATIO, model_step * MAX_STEP_RATIO
    if not low <= product_step <= high:
        raise WindowUnavailable("wrong_step", f"model {model!r} works at {model_step:g}-minute steps and resamples "
                                              f"products between {low:g} and {high:g} minutes; frames are "
                                              f"{product_step:g} minutes apart")


def centre_crop(shape: tuple[int, int], crop: int | None) -> tuple[slice, slice]:
    """Rows and columns of the centred ``crop`` x ``crop`` window (everything when None)."""
    if crop is None:
        return slice(None), slice(None)
    ny, nx = shape
    if crop > min(ny, nx):
        raise ValueError(f"--crop {crop} is larger than the {ny}x{nx} grid")
    y0, x0 = (ny - crop) // 2, (nx - crop) // 2
    return slice(y0, y0 + crop), slice(x0, x0 + crop)


def bbox_slices(grid: Grid, bbox: tuple[float, float, float, float] | list[float]) -> tuple[slice, slice]:
    """Rows and columns whose pixel centres lie in ``[x_min, y_min, x_max, y_max]`` (the grid's CRS)."""
    x_min, y_min, x_max, y_max = bbox
    cols = np.nonzero((grid.x >= x_min) & (grid.x <= x_max))[0]
    rows = np.nonzero((grid.y >= y_min) & (grid.y <= y_max))[0]
    if not len(cols) or not len(rows):
        raise WindowUnavailable("empty_bbox", "bbox does not overlap the product's grid")
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


@dataclass
class Window:
    """Frames [T, H, W] in mm/h (NaN = nodata), their times, the product's step and the (cropped) grid."""

    frames: np.ndarray
    times: np.ndarray
    step_minutes: float
    grid: Grid

    @property
    def end(self) -> np.datetime64:
        return self.times[-1]


def read_window(ds: Any, length: int | None = None, end: str | datetime | np.datetime64 | None = None,
                bbox: tuple[float, float, float, float] | list[float] | None = None,
                frames_needed: Callable[[float | None], int] | None = None, product: str = "product") -> Window:
    """The ``length`` contiguous frames ending at ``end`` (default: the latest) of an open product.

    ``frames_needed(step)`` may replace ``length`` when how many frames a model reads depends on
    the product's step (resampling in time)."""
    times = ds["time"].values.astype("datetime64[s]")
    if not len(times):
        raise WindowUnavailable("too_few_frames", f"{product!r} has no frames")
    wanted = parse_utc(end)
    if wanted is None:
        last = len(times) - 1
    else:
        matches = np.nonzero(times == wanted)[0]
        if not len(matches):
            raise WindowUnavailable("time_not_in_archive", f"{utc_text(wanted)} is not a frame of {product!r} "
                                                           f"({utc_text(times[0])} .. {utc_text(times[-1])})")
        last = int(matches[0])
    step = time_step_minutes(times)
    if length is None:
        if frames_needed is None:
            raise TypeError("read_window needs length or frames_needed")
        length = frames_needed(step)
    if step is None or last + 1 < length:
        raise WindowUnavailable("too_few_frames", f"{product!r} has fewer than {length} frames up to that time")
    first = last - length + 1
    if not len(contiguous_starts(times[first : last + 1], length, step)):
        raise WindowUnavailable("gap_in_archive", f"the {length} frames up to {utc_text(times[last])} "
                                                  "are not contiguous")
    grid = Grid.from_dataset(ds)
    ys, xs = slice(None), slice(None)
    if bbox is not None:
        ys, xs = bbox_slices(grid, bbox)
        grid = Grid(crs_proj=grid.crs_proj, x=grid.x[xs], y=grid.y[ys])
    frames = ds["precip"].isel(time=slice(first, last + 1), y=ys, x=xs).values
    return Window(frames, times[first : last + 1], step, grid)
