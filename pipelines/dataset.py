"""(input, target) windows cut lazily out of a product in the archive.

A window is ``t_in + t_out`` consecutive frames exactly one product step apart, so it never
spans a gap. Splits are by blocks of time: every frame falls in exactly one block, every
block belongs to exactly one split, and a window is kept only when its first and last frames
lie in the same block, so no window straddles train/val/test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from pipelines.channels import AuxiliaryReader, AuxiliarySpec, encode_channels
from pipelines.chunk_read import decode_table, local_chunk_array, model_space_tables
from pipelines.normalization import RainNormalizer
from pipelines.query import contiguous_starts, time_step_minutes
from pipelines.store import VARIABLE, ProductArchive, decode_rain

SPLITS = ("train", "val", "test")
#: per (store, product, length, last time, threshold): each frame's wet share (``SequenceDataset.wet_fractions``)
_WET_FRACTIONS: dict[tuple, np.ndarray] = {}


@dataclass(frozen=True)
class TimeBlockSplit:
    """Block ``k`` (of ``block_hours`` since the epoch) goes to ``pattern[k % len(pattern)]``."""

    block_hours: float = 24.0
    pattern: tuple[str, ...] = ("train",) * 8 + ("val", "test")

    def __post_init__(self) -> None:
        unknown = set(self.pattern) - set(SPLITS)
        if unknown or not self.pattern:
            raise ValueError(f"split pattern must use {SPLITS}, got {self.pattern}")

    def block_of(self, seconds: np.ndarray) -> np.ndarray:
        return np.floor_divide(seconds, int(self.block_hours * 3600))

    def split_of(self, seconds: np.ndarray) -> np.ndarray:
        return np.asarray(self.pattern)[self.block_of(seconds) % len(self.pattern)]


@dataclass(frozen=True)
class MonthSplit:
    """Whole calendar months (UTC) to named splits, the rest to ``default``: the split of a long
    archive, where a month is the natural unit (no month in two roles, seasons kept whole).
    ``months`` maps a split to its months as ``YYYY-MM``."""

    months: tuple[tuple[str, tuple[str, ...]], ...]
    default: str = "train"

    @classmethod
    def parse(cls, months: dict[str, list[str]], default: str = "train") -> MonthSplit:
        seen: dict[str, str] = {}
        for split, listed in months.items():
            if split not in SPLITS:
                raise ValueError(f"data.split_months: unknown split {split!r}; use {SPLITS}")
            for month in listed:
                try:
                    np.datetime64(str(month), "M")
                except ValueError:
                    raise ValueError(f"data.split_months: {month!r} is not a month (YYYY-MM)") from None
                if str(month) in seen:
                    raise ValueError(f"data.split_months: {month} is in both {seen[str(month)]!r} and {split!r}")
                seen[str(month)] = split
        return cls(tuple((split, tuple(map(str, listed))) for split, listed in months.items()), default)

    @property
    def pattern(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.months) + (self.default,)

    @property
    def block_hours(self) -> str:
        return "month"

    def block_of(self, seconds: np.ndarray) -> np.ndarray:
        return np.asarray(seconds).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)

    def split_of(self, seconds: np.ndarray) -> np.ndarray:
        blocks = self.block_of(seconds)
        out = np.full(blocks.shape, self.default, dtype=object)
        for split, listed in self.months:
            for month in listed:
                out[blocks == np.datetime64(month, "M").astype(np.int64)] = split
        return out.astype(str)

    def to_dict(self) -> dict[str, list[str]]:
        return {split: list(listed) for split, listed in self.months}


def window_starts(
    seconds: np.ndarray, length: int, step_seconds: int, split: str | None, splitter: TimeBlockSplit | MonthSplit
) -> np.ndarray:
    """Indices where ``length`` frames follow each other at exactly ``step_seconds``, inside one
    block of ``split`` (any block when ``split`` is None)."""
    starts = contiguous_starts(seconds.astype("datetime64[s]"), length, step_seconds / 60)
    if split is not None and len(starts):
        ends = starts + length - 1
        same_block = splitter.block_of(seconds[starts]) == splitter.block_of(seconds[ends])
        starts = starts[same_block & (splitter.split_of(seconds[starts]) == split)]
    return starts


class SequenceDataset(Dataset):
    """Windows from one product: ``inputs`` [t_in, 1, H, W], ``targets`` [t_out, 1, H, W].

    Tensors are normalised (``normalizer``) with nodata filled as no rain; ``*_mask`` say
    which pixels were observed, so losses can ignore the rest. With ``crop`` set, a random
    ``crop`` x ``crop`` window is taken (centred for val/test), retried up to ``crop_tries``
    times until at least ``min_rain_fraction`` of the last input frame rains. With ``until``,
    only windows that end before that time are kept (a held-out tail for promotion). With
    ``extrapolation`` (a cache path from ``pipelines.extrapolation``), each window also carries
    the cached optical-flow extrapolation of its init frame, cropped and augmented alike. With
    ``auxiliary`` (``pipelines.channels``), each input frame also carries two channels per
    auxiliary product (its normalised rain on this grid, aligned in time, and its validity mask):
    ``inputs`` is then [t_in, 1 + 2K, H, W], cropped and augmented alike. With ``stride``, only
    every ``stride``-th window is kept (neighbouring windows share all but one frame). With
    ``advect_prob``, a training window is replaced, at that rate, by one real frame carried across
    the crop at a random constant speed (``_advected_codes``). With ``teacher`` (a cache path, as
    ``extrapolation``), each window also carries a baseline's cached forecast as ``teacher`` (and its
    ``teacher_mask``) for a network to learn from beside the observations; an advected window's
    teacher is its own future, since its motion is exact.
    """

    def __init__(
        self,
        store: str,
        product: str,
        t_in: int,
        t_out: int,
        split: str | None = None,
        splitter: TimeBlockSplit | MonthSplit | None = None,
        crop: int | None = None,
        min_rain_fraction: float = 0.0,
        rain_threshold: float = 0.1,
        augment: bool = False,
        normalizer: RainNormalizer | None = None,
        step_minutes: float | None = None,
        crop_tries: int = 10,
        seed: int = 0,
        storage_options: dict | None = None,
        until: np.datetime64 | None = None,
        extrapolation: str | None = None,
        auxiliary: list[AuxiliarySpec] | None = None,
        stride: int = 1,
        advect_prob: float = 0.0,
        advect_max_speed: int = 5,
        teacher: str | None = None,
        min_window_rain: float = 0.0,
        window_rain_threshold: float = 1.0,
    ):
        if t_in < 1 or t_out < 1:
            raise ValueError("t_in and t_out must be at least 1")
        if stride < 1:
            raise ValueError(f"stride must be at least 1 (every window), got {stride}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.store, self.product, self.storage_options = store, product, storage_options
        self.t_in, self.t_out = t_in, t_out
        self.split, self.splitter = split, splitter or TimeBlockSplit()
        self.crop, self.min_rain_fraction, self.rain_threshold = crop, min_rain_fraction, rain_threshold
        self.augment, self.crop_tries, self.seed = augment, crop_tries, seed
        self.normalizer = normalizer or RainNormalizer()
        archive = ProductArchive(store, product, storage_options)
        times = archive.times()
        self.seconds = times.astype(np.int64)
        self.step_minutes = step_minutes or time_step_minutes(times)
        if self.step_minutes is None:
            raise ValueError(f"product {product!r} has fewer than two frames: no step, no windows")
        self.starts = window_starts(
            self.seconds, t_in + t_out, int(round(self.step_minutes * 60)), split, self.splitter
        )
        if until is not None:  # held-out tail: no window may touch frames at or after ``until``
            last_frame = self.seconds[self.starts + t_in + t_out - 1]
            self.starts = self.starts[last_frame < np.datetime64(until, "s").astype(np.int64)]
        self.starts = self.starts[::stride]
        if not 0.0 <= advect_prob <= 1.0:
            raise ValueError(f"advect_prob is a probability, got {advect_prob}")
        if advect_prob and (crop is None or extrapolation or auxiliary):
            raise ValueError("advected windows need a crop and no extrapolation or auxiliary channels "
                             "(a translated frame has no satellite frames, and its extrapolation would be exact)")
        self.advect_prob, self.advect_max_speed = advect_prob, advect_max_speed
        self._array: zarr.Array | None = None
        self.extrapolation, self.teacher = extrapolation, teacher
        self.auxiliary = list(auxiliary or [])
        self.readers = [AuxiliaryReader(store, spec, archive.grid(), storage_options) for spec in self.auxiliary]
        self._caches: dict[str, Any] = {}  # extrapolation caches by path (what a hybrid corrects, a teacher)
        self._epoch = 0
        with archive.open() as ds:
            self.shape = ds[VARIABLE].shape[1:]
            encoding = ds[VARIABLE].encoding
        self._scale = float(encoding.get("scale_factor", 1.0))
        self._fill = encoding.get("_FillValue")
        if crop is not None and crop > min(self.shape):
            raise ValueError(f"crop {crop} is larger than the {self.shape} grid of {product!r}")
        if min_window_rain > 0 and len(self.starts):  # a long archive is mostly dry: keep the rainy windows
            wet = self.wet_fractions(window_rain_threshold)[self.starts + t_in - 1]
            self.starts = self.starts[wet >= min_window_rain]

    def __len__(self) -> int:
        return len(self.starts)

    def wet_fractions(self, threshold: float, block: int = 4096) -> np.ndarray:
        """Per stored frame, the share of its observed pixels at or above ``threshold`` mm/h (0 for a
        frame with none observed); read in blocks of frames, so memory stays bounded. Computed once per
        process for a product of a given length (the train, val and test datasets share it)."""
        key = (self.store, self.product, len(self.seconds), int(self.seconds[-1]), float(threshold))
        if key not in _WET_FRACTIONS:
            out = np.zeros(len(self.seconds), dtype=np.float32)
            for lo in range(0, len(out), block):
                rate = self._decode(self.array[lo : lo + block])
                observed = np.count_nonzero(~np.isnan(rate), axis=(1, 2))
                out[lo : lo + block] = np.count_nonzero(rate >= threshold, axis=(1, 2)) / np.maximum(observed, 1)
            _WET_FRACTIONS[key] = out
        return _WET_FRACTIONS[key]

    def __getstate__(self) -> dict[str, Any]:  # zarr handles do not cross process boundaries
        state = self.__dict__.copy()
        state["_array"] = None
        state["_caches"] = {}
        return state

    def set_epoch(self, epoch: int) -> None:
        """Fresh random crops and augmentations every epoch (still reproducible)."""
        self._epoch = epoch

    def _forked(self) -> None:
        """Drop handles opened by another process (a DataLoader worker forked after the parent
        read): an object store's client (its HTTP session, its event loop) must not cross a fork."""
        if getattr(self, "_pid", None) != os.getpid():
            self._pid, self._array, self._caches = os.getpid(), None, {}

    @property
    def array(self) -> zarr.Array:
        self._forked()
        if self._array is None:  # chunks read in this thread where the layout allows (chunk_read)
            archive = ProductArchive(self.store, self.product, self.storage_options)
            self._array = local_chunk_array(zarr.open_array(archive._zstore, path=VARIABLE, mode="r", zarr_format=3))
        return self._array

    def _cached(self, path: str):
        """The extrapolation cache at ``path``, opened once per process."""
        self._forked()
        if path not in self._caches:
            from pipelines.extrapolation import ExtrapolationCache

            self._caches[path] = ExtrapolationCache(path, self.product)
        return self._caches[path]

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored integers -> mm/h float32 with NaN for nodata (the CF decoding, without xarray).

        8/16-bit codes go through a lookup table built by this same arithmetic (so the values
        are bit-identical): one gather instead of cast, multiply, compare and masked store."""
        if raw.dtype in (np.uint8, np.uint16):
            return np.take(decode_table(raw.dtype, self._scale, self._fill), raw)
        return decode_rain(raw, self._scale, self._fill)

    def _pick_crop(self, start: int, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the crop; deterministic for val/test (rng seeded by index)."""
        if not self.crop:
            return 0, 0
        ny, nx, size = self.shape[0], self.shape[1], self.crop
        if self.min_rain_fraction <= 0:
            if self.split in ("val", "test"):
                return (ny - size) // 2, (nx - size) // 2
            return int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
        best, best_fraction = (0, 0), -1.0
        last_input = start + self.t_in - 1
        for _ in range(self.crop_tries):  # tries share decoded chunks (chunk_read keeps them)
            y0, x0 = int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
            frame = self._decode(self.array[last_input, y0 : y0 + size, x0 : x0 + size])
            fraction = np.count_nonzero(frame >= self.rain_threshold) / frame.size  # NaN: not rain
            if fraction >= self.min_rain_fraction:
                return y0, x0
            if fraction > best_fraction:
                best, best_fraction = (y0, x0), fraction
        return best

    def _advected_codes(self, frame: int, y0: int, x0: int, rng: np.random.Generator) -> np.ndarray:
        """A window of ``t_in + t_out`` stored frames in which one real frame moves at a constant
        whole number of pixels per step (up to ``advect_max_speed`` on each axis, in any direction).

        The training days hold about a hundred windows, each day with one or two prevailing
        motions; here the motion is exact and varied and the texture is real radar, while growth
        and decay are left to the real windows. The frames are cut from the stored codes at shifted
        offsets (no interpolation), so nodata moves as the rain does."""
        n, size = self.t_in + self.t_out, int(self.crop)
        ny, nx = self.shape
        speed = max(0, min(self.advect_max_speed, (min(ny, nx) - size) // (n - 1)))
        vy, vx = (int(v) for v in rng.integers(-speed, speed + 1, size=2))
        span_y, span_x = abs(vy) * (n - 1), abs(vx) * (n - 1)
        # the region the moving crop sweeps, centred on the chosen (rainy) crop and kept on the grid
        top = int(np.clip(y0 - span_y // 2, 0, ny - size - span_y))
        left = int(np.clip(x0 - span_x // 2, 0, nx - size - span_x))
        region = self.array[frame, top : top + size + span_y, left : left + size + span_x]
        oy = [vy * k if vy >= 0 else span_y + vy * k for k in range(n)]
        ox = [vx * k if vx >= 0 else span_x + vx * k for k in range(n)]
        return np.stack([region[a : a + size, b : b + size] for a, b in zip(oy, ox, strict=True)])

    def _model_space_tables(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
        """Lookup tables from stored codes to model space (``chunk_read.model_space_tables``), for
        8/16-bit codes; None sends the window down the float path."""
        if dtype not in (np.uint8, np.uint16):
            return None
        return model_space_tables(np.dtype(dtype), self._scale, self._fill, self.normalizer)

    def _to_model_space(self, rate: np.ndarray) -> np.ndarray:
        return self.normalizer.forward(np.nan_to_num(rate, nan=0.0)).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = int(self.starts[index])
        epoch = 0 if self.split in ("val", "test") else self._epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        y0, x0 = self._pick_crop(start, rng)
        ny, nx = (self.crop, self.crop) if self.crop else self.shape
        stop = start + self.t_in + self.t_out
        advected = bool(self.advect_prob and self.split not in ("val", "test") and rng.random() < self.advect_prob)
        if advected:
            raw = self._advected_codes(start + self.t_in - 1, y0, x0, rng)
        else:
            raw = self.array[start:stop, y0 : y0 + ny, x0 : x0 + nx]
        turns, flip = (int(rng.integers(0, 4)), bool(rng.integers(0, 2))) if self.augment else (0, False)

        def augmented(frames: np.ndarray) -> np.ndarray:
            """The window's rotation and flip, the same for every stack that rides along."""
            if not self.augment:
                return frames
            frames = np.rot90(frames, k=turns, axes=(1, 2))
            return np.ascontiguousarray(frames[:, :, ::-1] if flip else frames)

        ext = None
        if self.extrapolation:  # cut and augmented like the window
            ext = augmented(self._cached(self.extrapolation).read(start + self.t_in - 1, self.t_out,
                                                                  slice(y0, y0 + ny), slice(x0, x0 + nx)))
        tables = None if self.readers else self._model_space_tables(raw.dtype)
        if tables is not None:  # codes straight to model space (the auxiliary channels need mm/h)
            codes = augmented(raw)
            z, valid = np.take(tables[0], codes), np.take(tables[1], codes)
        else:
            rate = augmented(self._decode(raw))
            valid, z = ~np.isnan(rate), self._to_model_space(rate)
        if ext is not None:
            z = np.concatenate([z, self._to_model_space(ext)])
        z = torch.from_numpy(z[:, None])
        mask = torch.from_numpy(valid[:, None])
        n = self.t_in + self.t_out
        item = {
            "inputs": z[: self.t_in],
            "targets": z[self.t_in : n],
            "input_mask": mask[: self.t_in],
            "target_mask": mask[self.t_in : n],
            "init_time": int(self.seconds[start + self.t_in - 1]),
            "offset": torch.tensor([y0, x0]),
        }
        if self.extrapolation:
            item["extrapolation"] = z[n:]
        if self.teacher and advected:
            item["teacher"], item["teacher_mask"] = item["targets"].clone(), item["target_mask"].clone()
        elif self.teacher:
            taught = augmented(self._cached(self.teacher).read(start + self.t_in - 1, self.t_out, slice(y0, y0 + ny),
                                                       slice(x0, x0 + nx)))
            item["teacher"] = torch.from_numpy(self._to_model_space(taught)[:, None])
            item["teacher_mask"] = torch.from_numpy(~np.isnan(taught)[:, None])
        if self.readers:  # the input times' auxiliary frames, augmented like the window
            times = self.seconds[start : start + self.t_in].astype("datetime64[s]")
            frames = [augmented(r.read(times, y0, x0, ny, nx).rain) for r in self.readers]
            channels = torch.from_numpy(encode_channels(rate[: self.t_in], self.auxiliary, frames))
            item["inputs"] = torch.cat([item["inputs"], channels], dim=1)
        return item
