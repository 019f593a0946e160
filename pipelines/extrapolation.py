"""The extrapolation of every init time, computed once and cached in Zarr.

Motion-conditioned networks train on (frames, extrapolation, target) windows. Running pysteps'
Lucas-Kanade + semi-Lagrangian advection (or S-PROG) for every window in every epoch would cost
more than the network itself on CPU, so each init time's extrapolation is computed once, on the
full grid, and stored beside the archive, one store per method (``METHODS``):
``<archive>.extrapolation.zarr/<product>/`` for optical flow, ``<archive>.sprog.zarr/<product>/``
for S-PROG. Each holds

- ``rain`` [n_frames, t_out, y, x]: uint16 hundredths of mm/h, 65535 = nodata, indexed by the
  archive index of the init (last observed) frame; chunks (1, t_out, 256, 256) so a training
  crop reads a few chunks;
- ``done`` [n_frames]: 1 once that init's extrapolation is written (after it, so an interrupted
  build resumes where it stopped and never trusts a half-written entry);
- ``time`` [n_frames]: the archive's frame times; a cache whose times differ is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipelines.motion import MOTION_HISTORY, extrapolate, sprog
from pipelines.processes import worker_pool
from pipelines.query import plan_windows
from pipelines.store import FILL, VARIABLE, ProductArchive, decode_precip, encode_precip

CHUNK = 256
HISTORY = MOTION_HISTORY
#: what a hybrid may correct: the baseline's name -> (mm/h frames, leads -> mm/h leads, the store's
#: suffix, what its attributes say)
METHODS = {
    "optical_flow": (extrapolate, ".extrapolation.zarr",
                     "pysteps Lucas-Kanade (dBR) + semi-Lagrangian extrapolation of the init frame"),
    "sprog": (sprog, ".sprog.zarr", "pysteps S-PROG: Lucas-Kanade motion, 8 cascade levels, AR(2), dBR"),
}


def _method(method: str) -> tuple:
    if method not in METHODS:
        raise ValueError(f"unknown extrapolation method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[method]


def cache_path(store: str, method: str = "optical_flow") -> str:
    """``data/archive.zarr`` -> ``data/archive.extrapolation.zarr`` (``.sprog.zarr`` for S-PROG),
    a store of its own."""
    base = store.rstrip("/")
    return (base.removesuffix(".zarr") if base.endswith(".zarr") else base) + _method(method)[1]


def init_indices(times: np.ndarray, t_out: int, history: int = HISTORY) -> np.ndarray:
    """Archive indices of the init frames that have ``history`` frames before and ``t_out`` after."""
    return plan_windows(times, history, t_out).starts + history - 1


@dataclass
class ExtrapolationCache:
    """Read side: the cached extrapolation of one product."""

    path: str
    product: str

    def __post_init__(self) -> None:
        self.group = zarr.open_group(f"{self.path}/{self.product}", mode="r", zarr_format=3)
        self.rain = self.group["rain"]
        self.done = self.group["done"][:].astype(bool)
        self.t_out = int(self.group.attrs["t_out"])

    def read(self, init_index: int, t_out: int, ys: slice, xs: slice) -> np.ndarray:
        """[t_out, y, x] mm/h with NaN = nodata."""
        if not self.done[init_index]:
            raise KeyError(f"no cached extrapolation for frame {init_index} of {self.product!r}; rebuild the cache")
        if t_out > self.t_out:
            raise ValueError(f"the cache holds {self.t_out} leads, {t_out} requested")
        return decode_precip(self.rain[init_index, :t_out, ys, xs])


def _open_for_writing(
    path: str, product: str, times: np.ndarray, shape: tuple[int, int], t_out: int, method: str,
) -> zarr.Group:
    root = zarr.open_group(path, mode="a", zarr_format=3)
    seconds = times.astype("datetime64[s]").astype(np.int64)
    if product in root:
        group = root[product]
        same = (
            int(group.attrs.get("t_out", -1)) >= t_out
            and group["time"].shape == seconds.shape
            and np.array_equal(group["time"][:], seconds)
            and tuple(group["rain"].shape[2:]) == tuple(shape)
            and group.attrs.get("extrapolation", "optical_flow") == method
        )
        if same:
            return group
        del root[product]  # the archive grew or the window changed: stale, rebuild
    group = root.create_group(product)
    group.attrs.update({"t_out": t_out, "history": HISTORY, "units": "mm h-1", "extrapolation": method,
                        "method": _method(method)[2]})
    group.create_array("rain", shape=(len(times), t_out, *shape), chunks=(1, t_out, CHUNK, CHUNK), dtype="uint16",
                       fill_value=int(FILL), compressors=(BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),))
    group.create_array("done", shape=(len(times),), chunks=(len(times),), dtype="uint8", fill_value=0)
    group.create_array("time", shape=(len(times),), chunks=(len(times),), dtype="int64")[:] = seconds
    return group


def _compute_one(store: str, product: str, path: str, index: int, t_out: int, method: str) -> int:
    archive = ProductArchive(store, product)
    source = zarr.open_array(archive._zstore, path=VARIABLE, mode="r", zarr_format=3)
    frames = decode_precip(source[index - HISTORY + 1 : index + 1])
    group = zarr.open_group(f"{path}/{product}", mode="r+", zarr_format=3)
    group["rain"][index] = encode_precip(_method(method)[0](frames, t_out, HISTORY))
    return index


def build_cache(
    store: str, product: str, t_out: int, workers: int = 2, path: str | None = None, progress: bool = True,
    method: str = "optical_flow", inits: Iterable[int] | None = None,
) -> str:
    """Compute what is missing of ``product``'s cache of ``method`` (resumable); returns the cache path.

    ``inits`` (archive indices of init frames) limits the work to the windows a run reads: on a long,
    mostly dry archive that is a fraction of every init time (an entry never computed is refused on
    read, never served as rain)."""
    path = path or cache_path(store, method)
    archive = ProductArchive(store, product)
    times = archive.times()
    with archive.open() as ds:
        shape = tuple(ds[VARIABLE].shape[1:])
    group = _open_for_writing(path, product, times, shape, t_out, method)
    t_out = int(group.attrs["t_out"])
    done = group["done"][:].astype(bool)
    candidates = init_indices(times, t_out)
    if inits is not None:
        candidates = np.intersect1d(candidates, np.asarray(list(inits), dtype=np.int64))
    todo = [int(i) for i in candidates if not done[i]]
    if not todo:
        return path
    from pipelines.progress import progress_display

    one = partial(_compute_one, store, product, path, t_out=t_out, method=method)
    bar = progress_display(disable=not progress)  # plain lines when not on a terminal
    # one worker: here, one forecast at a time (a pool's fresh interpreter re-imports pysteps, seconds)
    with bar, (worker_pool(workers) if workers > 1 else nullcontext()) as pool:
        task = bar.add_task(f"{method} of {product}", total=len(todo))
        for index in (pool.map(one, todo) if pool is not None else map(one, todo)):
            group["done"][index] = 1  # after the data: a flag never claims a frame that is not there
            bar.advance(task)
    return path
