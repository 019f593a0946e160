"""Auxiliary products as input channels: aligned in time, regridded onto the target's grid.

A multi-source model forecasts one *target* product (e.g. a radar composite) from its own
frames plus *auxiliary* products (e.g. NWC SAF CRR from a geostationary satellite, another
radar). Each auxiliary product becomes two input channels beside the target's rain rate:

- its rain rate, normalised by its own normaliser (``AuxiliarySpec.normalization``), 0 where
  it has no value;
- its validity mask: 1 where it has a value, 0 where it is nodata, off its grid, or where no
  frame was close enough in time. A missing frame is therefore "zeros plus mask", never "dry".

Time alignment (``align_latest``): each target time takes the auxiliary frame with the latest
valid time not after it, if that frame is at most ``tolerance_minutes`` older; otherwise the
frame is missing. A satellite frame every 15 min feeding a 5-min radar model thus repeats for
three radar times, which is what a forecaster has in real time (no frame from the future).

Regridding (``pipelines.regrid``, nearest or bilinear) needs, for every target pixel, its
fractional position in the auxiliary grid. That mapping depends only on the two grids, so it
is computed once per pair and cached in the store under ``_regrid/<key>`` (and in memory), and
any crop of the target grid reads only the auxiliary pixels it needs.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr

from pipelines.grid import Grid
from pipelines.normalization import RainNormalizer
from pipelines.regrid import PointMapping, fractional_indices, sample_bilinear, sample_nearest
from pipelines.store import ProductArchive, open_zarr_store
from pipelines.zarr_groups import require_group

#: where the regrid mappings live in a store (a group; listings skip names starting with "_")
REGRID_GROUP = "_regrid"
#: channels each auxiliary product adds: its normalised rain rate and its validity mask
CHANNELS_PER_AUXILIARY = 2
ALIGN_RULE = "latest_not_after"
AUX_METHODS = ("nearest", "bilinear")


class MissingChannel(LookupError):
    """A model needs an auxiliary product the archive or the request does not have."""

    def __init__(self, product: str, message: str):
        super().__init__(message)
        self.product = product


@dataclass(frozen=True)
class AuxiliarySpec:
    """One auxiliary product as a model needs it; saved in checkpoints, so a checkpoint alone can
    read its inputs from an archive."""

    product: str
    tolerance_minutes: float = 15.0
    method: str = "bilinear"
    normalization: dict[str, Any] = field(default_factory=lambda: RainNormalizer().to_dict())
    rule: str = ALIGN_RULE

    def __post_init__(self) -> None:
        if self.method not in AUX_METHODS:
            raise ValueError(f"auxiliary {self.product!r}: regrid method must be one of {AUX_METHODS} "
                             f"(a coarser auxiliary grid is interpolated, not averaged), got {self.method!r}")
        if self.tolerance_minutes < 0:
            raise ValueError(f"auxiliary {self.product!r}: tolerance_minutes must be >= 0")
        if self.rule != ALIGN_RULE:
            raise ValueError(f"auxiliary {self.product!r}: unknown alignment rule {self.rule!r}")

    @property
    def normalizer(self) -> RainNormalizer:
        return RainNormalizer.from_dict(self.normalization)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuxiliarySpec:
        return cls(**data)

    @classmethod
    def parse(cls, item: str | dict[str, Any] | AuxiliarySpec) -> AuxiliarySpec:
        """A config entry: a product name, or a mapping with ``product`` and any other field."""
        if isinstance(item, AuxiliarySpec):
            return item
        if isinstance(item, str):
            return cls(product=item)
        if "product" not in item:
            raise ValueError(f"an auxiliary entry needs a 'product': {item!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(item) - known
        if unknown:
            raise ValueError(f"auxiliary {item['product']!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**item)


def input_channels(auxiliary: list | None) -> int:
    """Channels a model reads: the target's rain rate plus two per auxiliary product."""
    return 1 + CHANNELS_PER_AUXILIARY * len(auxiliary or [])


def align_latest(target_times: np.ndarray, source_times: np.ndarray, tolerance_minutes: float) -> np.ndarray:
    """For each target time, the index of the latest source time not after it and at most
    ``tolerance_minutes`` older; -1 where there is none (a missing frame)."""
    target = np.asarray(target_times).astype("datetime64[s]").astype(np.int64)
    source = np.asarray(source_times).astype("datetime64[s]").astype(np.int64)
    index = np.searchsorted(source, target, side="right") - 1
    ok = index >= 0
    age = np.where(ok, target - source[np.clip(index, 0, None)] if len(source) else 0, np.iinfo(np.int64).max)
    ok &= age <= tolerance_minutes * 60 + 1e-6
    return np.where(ok, index, -1)


# -- the regrid mapping, cached per pair of grids ----------------------------------------------------
def _grid_key(grid: Grid) -> str:
    x, y = np.asarray(grid.x, np.float64), np.asarray(grid.y, np.float64)
    return f"{' '.join(grid.crs_proj.split())}|{x[0]:.3f},{x[-1]:.3f},{len(x)}|{y[0]:.3f},{y[-1]:.3f},{len(y)}"


def mapping_key(source: Grid, target: Grid) -> str:
    """A name for the pair of grids (the same pair always gets the same name)."""
    return hashlib.sha256(f"{_grid_key(source)}->{_grid_key(target)}".encode()).hexdigest()[:24]


_memory: dict[tuple[str, str], np.ndarray] = {}
_memory_guard = threading.Lock()


def compute_mapping(source: Grid, target: Grid) -> np.ndarray:
    """[2, H, W] float32: each target pixel's fractional (row, col) in ``source``; NaN outside it."""
    ny, nx = source.shape
    row, col = fractional_indices(target, source, "source")
    with np.errstate(invalid="ignore"):
        inside = (np.isfinite(row) & np.isfinite(col) & (row >= -0.5) & (row <= ny - 0.5)
                  & (col >= -0.5) & (col <= nx - 0.5))
    rows = np.where(inside, np.clip(row, 0, ny - 1), np.nan).astype(np.float32)
    cols = np.where(inside, np.clip(col, 0, nx - 1), np.nan).astype(np.float32)
    return np.stack([rows, cols]).reshape(2, *target.shape)


def cached_mapping(store: str, source: Grid, target: Grid, storage_options: dict | None = None) -> np.ndarray:
    """``compute_mapping`` once per pair of grids: from memory, else from the store's ``_regrid``
    group, else computed and saved there (a store that cannot be written keeps it in memory)."""
    key = mapping_key(source, target)
    with _memory_guard:
        if (store, key) in _memory:
            return _memory[(store, key)]
    zstore = open_zarr_store(store, storage_options)
    mapping = _load_mapping(zstore, key)
    if mapping is None:
        mapping = compute_mapping(source, target)
        _save_mapping(zstore, key, mapping, source, target)
    with _memory_guard:
        _memory[(store, key)] = mapping
    return mapping


def _load_mapping(zstore: Any, key: str) -> np.ndarray | None:
    """The saved mapping, or None when absent or left half-written by a killed writer."""
    try:
        array = zarr.open_array(zstore, path=f"{REGRID_GROUP}/{key}", mode="r", zarr_format=3)
        if array.attrs.get("complete") is not True:
            return None
        return np.asarray(array[...], dtype=np.float32)
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def _save_mapping(zstore: Any, key: str, mapping: np.ndarray, source: Grid, target: Grid) -> None:
    """Data first, then ``complete`` in its attributes: a reader never takes a half-written one."""
    try:
        require_group(zstore, REGRID_GROUP)
        array = zarr.create_array(zstore, name=f"{REGRID_GROUP}/{key}", shape=mapping.shape, dtype="float32",
                                  chunks=mapping.shape, overwrite=True)
        array[...] = mapping
        array.attrs.update({"source_grid": _grid_key(source), "target_grid": _grid_key(target), "complete": True})
    except (OSError, ValueError):  # a read-only store: the in-memory copy serves this process
        pass


def sample(frame: np.ndarray, rows: np.ndarray, cols: np.ndarray, method: str) -> np.ndarray:
    """``frame`` (a block of the source grid) at fractional (``rows``, ``cols``) of that block;
    NaN where the coordinates are NaN (off the source grid) or the data are nodata."""
    out = np.full(rows.shape, np.nan, dtype=np.float32)
    inside = np.isfinite(rows)
    if not inside.any():
        return out
    mapping = PointMapping(target_index=np.flatnonzero(inside),
                            coords=np.stack([rows[inside], cols[inside]]).astype(np.float64))
    sampler = sample_nearest if method == "nearest" else sample_bilinear
    out.ravel()[mapping.target_index] = sampler(np.asarray(frame, np.float64), mapping)
    return out


@dataclass
class AuxiliaryRead:
    """Auxiliary frames on the target grid: mm/h [T, H, W] (NaN = no value) and how many of the T
    target times had no auxiliary frame within the tolerance."""

    rain: np.ndarray
    missing_frames: int


class AuxiliaryReader:
    """One auxiliary product seen from a target grid: ``read(times, y0, x0, ny, nx)``."""

    def __init__(self, store: str, spec: AuxiliarySpec, target: Grid, storage_options: dict | None = None):
        self.spec, self.store, self.storage_options = spec, store, storage_options
        archive = ProductArchive(store, spec.product, storage_options)
        if not archive.exists():
            raise MissingChannel(spec.product, f"auxiliary product {spec.product!r} is not in the store {store}")
        self.times = archive.times()
        self.mapping = cached_mapping(store, archive.grid(), target, storage_options)
        self._dataset: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:  # an open dataset does not cross process boundaries
        return dict(self.__dict__, _dataset=None, _pid=None)

    @property
    def dataset(self) -> Any:
        """The product, opened once per process (an object store's client must not cross a fork)."""
        if self._dataset is None or self._pid != os.getpid():
            self._dataset = ProductArchive(self.store, self.spec.product, self.storage_options).open()
            self._pid = os.getpid()
        return self._dataset

    def read(self, times: np.ndarray, y0: int = 0, x0: int = 0, ny: int | None = None,
             nx: int | None = None) -> AuxiliaryRead:
        rows = self.mapping[0, y0 : y0 + ny if ny else None, x0 : x0 + nx if nx else None]
        cols = self.mapping[1, y0 : y0 + ny if ny else None, x0 : x0 + nx if nx else None]
        index = align_latest(times, self.times, self.spec.tolerance_minutes)
        out = np.full((len(index), *rows.shape), np.nan, dtype=np.float32)
        inside = np.isfinite(rows)
        if not inside.any() or (index < 0).all():
            return AuxiliaryRead(out, int((index < 0).sum()))
        # only the block of the source grid this crop maps into (plus the bilinear neighbours)
        r0, r1 = int(np.floor(np.nanmin(rows))), int(np.floor(np.nanmax(rows))) + 2
        c0, c1 = int(np.floor(np.nanmin(cols))), int(np.floor(np.nanmax(cols))) + 2
        wanted = sorted(set(index[index >= 0].tolist()))
        block = self.dataset["precip"].isel(time=wanted, y=slice(r0, r1), x=slice(c0, c1)).values
        frames = dict(zip(wanted, block, strict=True))
        for t, i in enumerate(index):
            if i >= 0:
                out[t] = sample(frames[int(i)], rows - r0, cols - c0, self.spec.method)
        return AuxiliaryRead(out, int((index < 0).sum()))


def encode_channels(rain: np.ndarray, specs: list[AuxiliarySpec], auxiliary: list[np.ndarray]) -> np.ndarray:
    """The auxiliary channels of a model's input: for each product its normalised rain (0 where no
    value) and its mask. ``auxiliary[k]``: [T, H, W] mm/h with NaN; returns [T, 2K, H, W] float32."""
    channels = []
    for spec, frames in zip(specs, auxiliary, strict=True):
        frames = np.asarray(frames, dtype=np.float32)
        if frames.shape != rain.shape:
            raise ValueError(f"auxiliary {spec.product!r} frames have shape {frames.shape}, "
                             f"the target's are {rain.shape}")
        valid = np.isfinite(frames)
        channels.append(np.asarray(spec.normalizer.forward(np.where(valid, frames, 0.0)), dtype=np.float32))
        channels.append(valid.astype(np.float32))
    return np.stack(channels, axis=-3) if channels else np.zeros((*rain.shape[:-2], 0, *rain.shape[-2:]), np.float32)


class AuxiliaryInputs:
    """Every auxiliary product one model reads, from one archive onto one target grid; counts the
    reads (cases) that lacked a frame of each product, for the reports."""

    def __init__(self, store: str, specs: list[AuxiliarySpec], target: Grid, storage_options: dict | None = None):
        self.readers = [AuxiliaryReader(store, spec, target, storage_options) for spec in specs]
        self.cases_missing = {spec.product: 0 for spec in specs}

    def read(self, times: np.ndarray, rows: slice = slice(None), cols: slice = slice(None)) -> dict[str, np.ndarray]:
        """Frames [T, H, W] mm/h per product at ``times``, over ``rows``/``cols`` of the target grid."""
        y0, x0 = rows.start or 0, cols.start or 0
        ny = None if rows.stop is None else rows.stop - y0
        nx = None if cols.stop is None else cols.stop - x0
        frames = {}
        for reader in self.readers:
            got = reader.read(np.asarray(times), y0, x0, ny, nx)
            self.cases_missing[reader.spec.product] += got.missing_frames > 0
            frames[reader.spec.product] = got.rain
        return frames
