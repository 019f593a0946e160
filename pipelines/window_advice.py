"""Why a training split got no windows, computed from the product itself: how many frames it has,
at what step, its longest gap-free run, and how the split's blocks fall on it. Advice that is right
for the data at hand (raising ``block_hours`` cannot help a product of 5 frames; a 1-hour block
cannot hold 10 frames of a 10-minute product)."""

from __future__ import annotations

import math

import numpy as np

from pipelines.query import time_step_minutes, utc_text


def longest_run(times: np.ndarray, step_minutes: float) -> int:
    """Frames in the longest stretch that follow each other at exactly ``step_minutes``."""
    if len(times) < 2:
        return len(times)
    seconds = times.astype("datetime64[s]").astype(np.int64)
    breaks = np.nonzero(np.diff(seconds) != int(round(step_minutes * 60)))[0]
    edges = np.concatenate([[-1], breaks, [len(times) - 1]])
    return int(np.diff(edges).max())


def no_windows_advice(product: str, times: np.ndarray, t_in: int, t_out: int, splitter, split: str = "train",
                      holdout_hours: float = 0.0) -> str:
    """One paragraph: what ``product`` holds and the one change that would give ``split`` windows."""
    need = t_in + t_out
    n = len(times)
    step = time_step_minutes(times) if n >= 2 else None
    if n == 0 or step is None:
        return (f"{product} holds {n} frame(s); a window needs {need} ({t_in} in + {t_out} out) at one step: "
                "ingest more frames")
    holds = f"{product} holds {n} frames every {step:g} min ({utc_text(times[0])} .. {utc_text(times[-1])})"
    if n < need:
        return (f"{holds}; a window needs {need} ({t_in} in + {t_out} out). Ingest at least {need - n} more "
                f"consecutive frames, or lower data.t_in/data.t_out (raising data.block_hours cannot help)")
    run = longest_run(times, step)
    if run < need:
        return (f"{holds}, but its longest gap-free run is {run} frames and a window needs {need} consecutive "
                f"({t_in} in + {t_out} out): fill the gaps (nowcast store info lists them) or lower "
                "data.t_in/data.t_out")
    span_h = need * step / 60
    from pipelines.dataset import window_starts

    seconds = times.astype("datetime64[s]").astype(np.int64)
    fitting = len(window_starts(seconds, need, int(round(step * 60)), split, splitter))
    if fitting:
        return (f"{holds}; {fitting} windows of {need} frames lie in '{split}' blocks, but none was kept: the "
                "held-out tail (data.holdout_hours) or the rain selection (data.min_window_rain, "
                "data.min_rain_fraction) removed them all; lower those")
    if getattr(splitter, "block_hours", None) == "month":
        return (f"{holds}; no month of it is assigned to '{split}' by data.split_months "
                f"({splitter.to_dict()}, other months {splitter.default}): name a month it has")
    block_h = float(splitter.block_hours)
    pattern = list(splitter.pattern)
    tail = f" (data.holdout_hours {holdout_hours:g} leaves the last {holdout_hours:g} h out)" if holdout_hours else ""
    if span_h > block_h:
        suggest = math.ceil(span_h * 2)
        return (f"{holds}; a window of {need} frames spans {span_h:.3g} h, longer than one {block_h:g}-hour block: "
                f"set data.block_hours to at least {math.ceil(span_h)} (e.g. {suggest}, with "
                f"data.split_pattern {pattern}), or lower data.t_in/data.t_out{tail}")
    blocks = int(math.ceil(n * step / 60 / block_h))
    return (f"{holds}, about {blocks} blocks of {block_h:g} h; split_pattern {pattern} assigns none of the blocks "
            f"that hold {need} consecutive frames to '{split}'{tail}: put more '{split}' in data.split_pattern, "
            f"use smaller blocks (data.block_hours {max(math.ceil(span_h), 1)}), or ingest more hours")
