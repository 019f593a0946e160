"""One Zarr (v3) group per product, written through xarray; append-only, idempotent, crash-safe.

Why it survives ``kill -9``: every key is written atomically (temp file + rename on a local
store, a single PUT on object stores) and readers open the group through its *consolidated*
metadata, which xarray rewrites last. Until that one key changes, new chunks and resized
array metadata are invisible; a rerun overwrites them. Frames that arrive older than the
newest stored frame are merged into the tail through a staging group (a journal): the merged
tail is written there first, marked complete, then copied in; an interrupted copy is redone
from the journal at the next write, so the store ends time-sorted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.coding.common import lazy_elemwise_func
from zarr.codecs import BloscCodec, Crc32cCodec

from pipelines.cf import CONVENTIONS, VARIABLE, rain_rate_dataset
from pipelines.frame import Frame
from pipelines.grid import Grid
from pipelines.integrity import (
    DEFAULT_COMPRESSORS,
    CheckedFsspecStore,
    CheckedLocalStore,
    DamagedChunk,
    DamagedData,
    DamagedProduct,
    damaged_from,
)
from pipelines.query import Window, read_window, time_step_minutes
from pipelines.zarr_groups import require_group

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")

STAGING_GROUP = "_staging"
#: Stored as uint16 hundredths of mm/h (0.005 mm/h precision, 655 mm/h range), 65535 = nodata.
#: Chosen by bench/storage_encoding.py; see docs/storage.md for the measurements.
SCALE = np.float32(0.01)
FILL = np.uint16(65535)
#: Chunk edge in pixels for new stores. 256 (was 512): a 128-256 px training crop decodes
#: 2-3x fewer pixels it then throws away (docs/performance.md, "Data path": 1.7x the 128 px
#: window rate); stores written with 512 stay readable, their arrays carry their own chunks.
TILE = 256
#: Byte shuffle (was bitshuffle): 20 % (FMI) and 13 % (OPERA) smaller with zstd-3 and faster
#: to decode on uint16 hundredths (docs/performance.md, "Data path").
SHUFFLE = "shuffle"


def encode_precip(rain_rate: np.ndarray) -> np.ndarray:
    """mm/h -> the stored uint16 (hundredths, rounded in float64; NaN -> FILL; clipped to range).

    The one encoder: every path that stores rain (append, merge, cache) must round alike, or a
    frame merged into place would differ from the same frame appended."""
    rain = np.asarray(rain_rate, dtype=np.float64)
    out = np.clip(np.round(np.nan_to_num(rain, nan=0.0) / float(SCALE)), 0, int(FILL) - 1).astype(np.uint16)
    out[np.isnan(rain)] = FILL
    return out


def decode_rain(raw: np.ndarray, scale: float = float(SCALE), fill: Any = FILL) -> np.ndarray:
    """Stored integers -> mm/h as float32, ``fill`` -> NaN: the one decoder (archive reads, the
    training dataset, caches, forecast stores).

    Hundredths are divided by 100 rather than multiplied by float32(0.01): the quotient is the
    float32 nearest each hundredth, so 0.10, 1.00 or 5.00 mm/h read back as exactly 0.1, 1.0 and
    5.0, the thresholds verification counts rain at (a product of 0.01 lands a bit below them)."""
    out = np.asarray(raw).astype(np.float32)
    inverse = 1.0 / float(scale)
    if abs(inverse - round(inverse)) <= 1e-4:
        out /= np.float32(round(inverse))
    else:
        out *= np.float32(scale)
    if fill is not None:
        out[np.asarray(raw) == fill] = np.nan
    return out


def decode_precip(raw: np.ndarray) -> np.ndarray:
    """Stored uint16 -> mm/h as float32, FILL -> NaN (this archive's encoding)."""
    return decode_rain(raw)


class GridMismatchError(ValueError):
    """A frame's grid or CRS is not the product's."""


@dataclass
class WriteResult:
    written: int = 0
    already_present: int = 0
    inserted_out_of_order: int = 0


def precip_encoding(shape: tuple[int, int]) -> dict[str, Any]:
    """How a new product's rain is stored (existing products keep the encoding they were made with)."""
    ny, nx = shape
    return {
        "dtype": "uint16",
        "scale_factor": SCALE,
        "_FillValue": FILL,
        "fill_value": FILL,  # zarr's own: a chunk never written reads as nodata, not as 0 mm/h
        "chunks": (1, min(TILE, ny), min(TILE, nx)),
        # crc32c last: a flipped byte, a truncated or a missing chunk is an error naming the frame
        # (pipelines.integrity); bench/checksum_cost.py and docs/storage.md have its cost
        "compressors": (BloscCodec(cname="zstd", clevel=3, shuffle=SHUFFLE), Crc32cCodec()),
    }


TIME_ENCODING = {
    "units": "seconds since 1970-01-01T00:00:00",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
    "chunks": (4096,),
    "compressors": DEFAULT_COMPRESSORS,
}

#: re-exported: the store layer's errors for damaged data (``pipelines.integrity``)
__all__ = ["DamagedChunk", "DamagedData", "DamagedProduct", "damaged_from"]


def archive_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Every variable's encoding for a new product group or journal: checksummed, all of them."""
    encoding: dict[str, dict[str, Any]] = {name: {"compressors": DEFAULT_COMPRESSORS} for name in ds.variables}
    encoding[VARIABLE] = precip_encoding(ds[VARIABLE].shape[1:])
    encoding["time"] = TIME_ENCODING
    return encoding


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Zarr attributes must be JSON: drop None, turn numpy scalars into Python ones."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def frames_to_dataset(frames: Sequence[Frame], product: str) -> xr.Dataset:
    """Stack frames (one grid) into the archive's CF layout."""
    grid = frames[0].grid
    first = frames[0].attrs
    # quantised to the stored precision here, so the CF encoder has nothing left to round
    precip = decode_precip(encode_precip(np.stack([f.rain_rate for f in frames])))
    times = np.array([f.time for f in frames], dtype="datetime64[ns]")
    ds = rain_rate_dataset(
        precip, ("time", "y", "x"),
        {"time": ("time", times, {"standard_name": "time", "long_name": "valid time (UTC)", "axis": "T"})},
        grid, "rain rate",
    )
    ds.attrs = _clean_attrs(
        {
            "Conventions": CONVENTIONS,
            "title": f"{product} rain rate",
            "product": product,
            "provider": first.get("provider"),
            "source_product": first.get("source_product"),
            "conversion": first.get("conversion"),
            "zr_a": first.get("zr_a"),
            "zr_b": first.get("zr_b"),
            "accumulation_minutes": first.get("accumulation_minutes"),
            "max_rain_rate_mm_h": 300.0,
        }
    )
    return ds


def fsspec_options(storage_options: dict | None = None) -> dict:
    """fsspec storage options with the listings cache off unless the caller turns it on.

    fsspec keeps one filesystem per thread, each caching the directory listings it has read: a
    listing cached before another thread or process (a replica, ``nowcast verify``, an ingest)
    wrote a key would hide that key from this process for good."""
    return {"use_listings_cache": False, **(storage_options or {})}


def open_zarr_store(store: str, storage_options: dict | None = None, read_only: bool = False,
                    checked: bool = False) -> Any:
    """A zarr Store for a local path (atomic writes) or an fsspec URL (s3://, gs://, ...).

    ``checked``: chunk reads of checksummed arrays are verified and a damaged or missing chunk
    raises ``DamagedChunk`` naming product, time and key (``pipelines.integrity``)."""
    if "://" in store and not store.startswith("file://"):
        cls = CheckedFsspecStore if checked else zarr.storage.FsspecStore
        return cls.from_url(store, storage_options=fsspec_options(storage_options), read_only=read_only)
    cls = CheckedLocalStore if checked else zarr.storage.LocalStore
    return cls(store.removeprefix("file://"), read_only=read_only)


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def open_rain_dataset(zstore: Any, **kwargs: Any) -> xr.Dataset:
    """A product group, its rain decoded to float32 mm/h (lazily, NaN for nodata).

    Why not xarray's own decoding: it multiplies by the scale factor (float32 0.01, kept by JSON
    as 0.009999999776) in float64, so 100 hundredths read 0.99999998 mm/h, below the 1 mm/h
    threshold verification counts at. ``decode_rain`` gives exactly 1.0, as training reads it."""
    ds = xr.open_zarr(zstore, consolidated=True, zarr_format=3, mask_and_scale={VARIABLE: False}, **kwargs)
    if VARIABLE not in ds:
        return ds
    raw = ds[VARIABLE].variable
    attrs = dict(raw.attrs)
    scale = attrs.pop("scale_factor", 1.0)
    fill = attrs.pop("_FillValue", None)
    data = lazy_elemwise_func(raw._data, functools.partial(decode_rain, scale=float(scale), fill=fill), np.float32)
    encoding = dict(raw.encoding, scale_factor=np.float32(scale), dtype=raw.dtype)
    if fill is not None:
        encoding["_FillValue"] = fill
    ds[VARIABLE] = xr.Variable(raw.dims, data, attrs, encoding)
    return ds


def _open_consolidated(zstore: Any) -> xr.Dataset:
    return open_rain_dataset(zstore, chunks=None)


class ProductArchive:
    """The Zarr group of one product inside a store (local path or fsspec URL)."""

    def __init__(self, store: str, product: str, storage_options: dict | None = None,
                 lock_timeout: float = 60.0):
        if not product or "/" in product or product.startswith("_"):
            raise ValueError(f"invalid product name {product!r}: use a plain name such as 'fmi'")
        self.store = str(store)
        self.product = product
        self.storage_options = storage_options
        # Each product (and its staging journal) is opened as a store of its own so that its
        # consolidated metadata, at its own root, is the single key that commits a write.
        self._root_store = open_zarr_store(self.store, storage_options)
        self._zstore = open_zarr_store(_join(self.store, product), storage_options, checked=True)
        self._staging_store = open_zarr_store(_join(self.store, STAGING_GROUP, product), storage_options,
                                              checked=True)
        self._staging = f"{STAGING_GROUP}/{product}"
        #: how long a write waits for another process's writer lock before WriterBusy
        self.lock_timeout = lock_timeout

    # -- reading -----------------------------------------------------------------------
    def exists(self) -> bool:
        """True once the group has been committed (its consolidated metadata is readable).

        A ``zarr.json`` that is there but cannot be parsed is not "no product": DamagedProduct
        names it (a writer must not take the product for an uncommitted creation and drop it)."""
        try:
            _open_consolidated(self._zstore).close()
            return True
        except DamagedData:
            raise
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
            self._raise_if_damaged(exc)
            return False
        except Exception as exc:  # consolidated metadata missing -> creation never committed
            if "consolidated" in str(exc).lower() or "not found" in str(exc).lower():
                return False
            raise

    def _raise_if_damaged(self, exc: BaseException) -> None:
        """DamagedProduct when the product's own ``zarr.json`` is present but not valid JSON."""
        key = "zarr.json"
        raw = zarr.core.sync.sync(self._zstore.get(key, zarr.core.buffer.default_buffer_prototype()))
        if raw is None:
            return
        try:
            json.loads(raw.to_bytes())
        except ValueError as bad:
            raise DamagedProduct(self.product, f"{self.product}/{key}", f"not valid JSON ({bad})") from exc

    def open(self) -> xr.Dataset:
        """The committed product as an xarray Dataset (lazy, decoded to mm/h).

        While a complete merge journal exists (a merge under way, or one a killed writer left
        for the next write to finish), the product's tail is being rewritten in place; readers
        then get the journal's frames for that tail, so no time is ever paired with another
        time's data."""
        journal = self._complete_journal()
        if journal is None:
            try:
                return _open_consolidated(self._zstore)
            except DamagedData:
                raise
            except ValueError as exc:  # a zarr.json that no longer parses: name it (DamagedProduct)
                self._raise_if_damaged(exc)
                raise
        start = int(journal.attrs["insert_at"])
        main = open_rain_dataset(self._zstore, chunks={})
        staged = open_rain_dataset(self._staging_store, chunks={})
        view = xr.concat([main.isel(time=slice(0, start)), staged[[VARIABLE]]], dim="time",
                         data_vars="minimal", coords="minimal", compat="override", join="override")
        view.attrs = main.attrs
        return view

    def _committed_length(self) -> int:
        """Frames in the product's own commit (what writers build on; readers may see a journal)."""
        with _open_consolidated(self._zstore) as ds:
            return ds.sizes["time"]

    def _complete_journal(self) -> zarr.Group | None:
        try:
            staging = zarr.open_group(self._staging_store, mode="r", zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return None
        return staging if staging.attrs.get("complete") is True else None

    def times(self) -> np.ndarray:
        with self.open() as ds:
            return ds["time"].values.astype("datetime64[s]")

    def grid(self) -> Grid:
        with self.open() as ds:
            return Grid.from_dataset(ds)

    def step_minutes(self) -> float | None:
        """The product's step (the most common spacing); None below two frames."""
        return time_step_minutes(self.times())

    def window(self, length: int | None = None, end: Any = None, bbox: Any = None,
               frames_needed: Callable[[float | None], int] | None = None) -> Window:
        """The contiguous frames ending at ``end`` (default the latest), optionally inside ``bbox``:
        ``pipelines.query.read_window`` on this product."""
        with self.open() as ds:
            return read_window(ds, length, end, bbox, frames_needed, self.product)

    def source_product(self) -> str | None:
        """What the product's frames are (``source_product``: e.g. 'ODIM RATE ...' vs 'ODIM ACRR ...')."""
        with self.open() as ds:
            return ds.attrs.get("source_product")

    def check_grid(self, frame: Frame, grid: Grid) -> None:
        if not frame.grid.same_as(grid):
            raise GridMismatchError(
                f"{frame.source}: grid/CRS differs from product '{self.product}': "
                f"file has {frame.grid.describe()}; product has {grid.describe()}"
            )

    # -- writing -----------------------------------------------------------------------
    def _root(self, mode: str = "a") -> zarr.Group:
        if mode == "a":  # writers of other products may be creating the root at this moment
            return require_group(self._root_store)
        return zarr.open_group(self._root_store, mode=mode, zarr_format=3, use_consolidated=False)

    def _to_zarr(self, ds: xr.Dataset, zstore: Any, **kwargs: Any) -> None:
        """Write, then commit by consolidating the group's metadata (its one atomic key)."""
        ds.to_zarr(zstore, consolidated=False, zarr_format=3, write_empty_chunks=True, **kwargs)
        self._fence()
        zarr.consolidate_metadata(zstore, zarr_format=3)

    def _fence(self) -> None:
        """Right before a commit: stop if this writer's lease on an object store was lost (another
        writer took the product over after it expired), so two writers never both commit."""
        from pipelines.locking import assert_held

        assert_held(self.store, self.product)

    def _create(self, ds: xr.Dataset) -> None:
        encoding = archive_encoding(ds)
        self._root()  # the store's root group, so the archive is one zarr hierarchy
        self._to_zarr(ds, self._zstore, mode="w", encoding=encoding)

    def _append(self, ds: xr.Dataset) -> None:
        """Grow the arrays (invisible until the commit), then fill the new space as a region.

        Not xarray's ``append_dim``: in append mode xarray rewrites the group's attributes,
        i.e. the very key that holds the consolidated metadata, and a kill at that moment
        would leave a committed product without its commit record.
        """
        start = self._committed_length()
        for name in (VARIABLE, "time"):
            array = zarr.open_array(self._zstore, path=name, mode="r+", zarr_format=3)
            array.resize((start + ds.sizes["time"], *array.shape[1:]))
        self._overwrite_region(ds, start)

    def _overwrite_region(self, ds: xr.Dataset, start: int) -> None:
        """Data first, then the time index, then the commit: the time index never names a slot
        whose data is not there yet (a merge's readers see the journal meanwhile, see ``open``)."""
        region = {"time": slice(start, start + ds.sizes["time"])}
        ds[[VARIABLE]].drop_vars(["x", "y"]).to_zarr(self._zstore, mode="r+", region=region, consolidated=False,
                                                     zarr_format=3, write_empty_chunks=True)
        # xarray's region mode leaves index coordinates alone, so the times go in through zarr
        # (same CF encoding: int64 seconds since the epoch) before the commit.
        seconds = ds["time"].values.astype("datetime64[s]").astype(np.int64)
        zarr.open_array(self._zstore, path="time", mode="r+", zarr_format=3)[region["time"]] = seconds
        self._fence()
        zarr.consolidate_metadata(self._zstore, zarr_format=3)

    def writer_lock(self, timeout: float | None = None) -> Any:
        """This product's writer lock (``pipelines.locking``); re-entrant within a process."""
        from pipelines.locking import writer_lock

        return writer_lock(self.store, self.product, self.lock_timeout if timeout is None else timeout,
                           self.storage_options)

    def write(self, frames: Sequence[Frame]) -> WriteResult:
        """Add frames; times already stored are skipped, late frames are merged in order."""
        with self.writer_lock():
            return self._write(frames)

    def _write(self, frames: Sequence[Frame]) -> WriteResult:
        result = WriteResult()
        self._recover()
        by_time: dict[np.datetime64, Frame] = {}
        for frame in sorted(frames, key=lambda f: f.time):
            if frame.time in by_time:
                result.already_present += 1
            else:
                by_time[frame.time] = frame
        new = list(by_time.values())
        if not new:
            return result
        if not self.exists():
            self._create(frames_to_dataset(new, self.product))
            result.written = len(new)
            return result
        grid = self.grid()
        for frame in new:
            self.check_grid(frame, grid)
        stored = self.times()
        stored_set = set(stored.tolist())
        fresh = [f for f in new if f.time.astype("datetime64[s]").item() not in stored_set]
        result.already_present += len(new) - len(fresh)
        if not fresh:
            return result
        ds = frames_to_dataset(fresh, self.product)
        if len(stored) == 0 or fresh[0].time > stored[-1]:
            self._append(ds)
        else:
            result.inserted_out_of_order = self._insert(ds, stored)
        result.written = len(fresh)
        return result

    def _insert(self, new: xr.Dataset, stored: np.ndarray) -> int:
        """Merge frames older than the newest stored one through the staging journal."""
        start = int(np.searchsorted(stored, new["time"].values[0].astype("datetime64[s]")))
        with self.open() as current:
            old_tail = current[[VARIABLE]].isel(time=slice(start, None)).load()
        merged = xr.concat([old_tail, new[[VARIABLE]]], dim="time").sortby("time")
        merged.attrs = {"insert_at": start, "complete": False}
        encoding = archive_encoding(merged)
        require_group(self._root_store, STAGING_GROUP)  # zarr v3 has no implicit parent groups
        try:
            self._to_zarr(merged, self._staging_store, mode="w", encoding=encoding)
        except OSError as exc:
            if disk_full(exc):  # an incomplete journal is never replayed: release its space now
                settle_pending_writes()
                with contextlib.suppress(Exception):
                    self._discard_staging()
            raise
        # The journal counts only once this flag is written (one atomic key).
        self._fence()
        self._root()[self._staging].attrs.update({"complete": True})
        self._apply_staging()
        return int(new.sizes["time"])

    def _apply_staging(self) -> None:
        staged = _open_consolidated(self._staging_store).load()
        start = int(staged.attrs["insert_at"])
        committed = self._committed_length()
        end = start + staged.sizes["time"]
        if committed < end:
            self._append(staged.isel(time=slice(committed - start, None)))
        elif committed > end and staged.attrs.get("truncate") is True:
            self._shrink(end)  # frames dropped (drop_frames): invisible until the commit below
        self._overwrite_region(staged, start)
        self._discard_staging()

    def _shrink(self, length: int) -> None:
        for name in (VARIABLE, "time"):
            array = zarr.open_array(self._zstore, path=name, mode="r+", zarr_format=3)
            array.resize((length, *array.shape[1:]))

    def drop_frames(self, indices: Sequence[int]) -> int:
        """Remove committed frames (damaged ones that ``nowcast store check --repair`` found), so a
        re-ingest of their source files puts them back; returns how many were dropped.

        The frames after the first dropped one are rewritten through the merge journal, so a kill
        at any point leaves either the old product or the new one, never times paired with
        another time's data. The frames kept are read through the checked store: a damaged frame
        not in ``indices`` stops the drop (DamagedChunk) rather than being copied."""
        with self.writer_lock():
            self._recover()
            length = self._committed_length()
            drop = sorted({int(i) for i in indices if 0 <= int(i) < length})
            if not drop:
                return 0
            start = drop[0]
            keep = [i for i in range(start, length) if i not in set(drop)]
            if not keep:  # only the tail goes: shrink and commit (a kill before the commit changes nothing)
                self._shrink(start)
                self._fence()
                zarr.consolidate_metadata(self._zstore, zarr_format=3)
                return len(drop)
            with _open_consolidated(self._zstore) as current:
                tail = current[[VARIABLE]].isel(time=keep).load()
            tail.attrs = {"insert_at": start, "complete": False, "truncate": True}
            require_group(self._root_store, STAGING_GROUP)
            self._to_zarr(tail, self._staging_store, mode="w", encoding=archive_encoding(tail))
            self._fence()
            self._root()[self._staging].attrs.update({"complete": True})
            self._apply_staging()
            return len(drop)

    def _discard_staging(self) -> None:
        """Unmark the journal (one atomic key) before deleting it key by key: a journal that is
        half deleted must never be replayed. An incomplete journal has nothing to unmark and is
        deleted at once: that writes nothing, so it works on a full disk (and frees its space)."""
        root = self._root()
        journal = root[self._staging]
        if journal.attrs.get("complete") is True:
            journal.attrs.update({"complete": False})
        del root[self._staging]

    def _journal_keys_left(self) -> bool:
        """True when keys remain under the journal's prefix (with or without its group metadata)."""

        async def any_key() -> bool:
            async for _ in self._root_store.list_prefix(f"{self._staging}/"):
                return True
            return False

        return zarr.core.sync.sync(any_key())

    def journal_left(self) -> str | None:
        """What is left of this product's merge journal: None (nothing), "complete" (kept: it is
        what readers see and the next write finishes) or "incomplete"."""
        try:
            journal = zarr.open_group(self._staging_store, mode="r", zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return None
        return "complete" if journal.attrs.get("complete") is True else "incomplete"

    def recover(self) -> str | None:
        """Finish or discard an interrupted insert; drop a creation that never committed."""
        with self.writer_lock():
            return self._recover()

    def _recover(self) -> str | None:
        root = self._root()
        note = None
        if STAGING_GROUP in root and self.product in root[STAGING_GROUP]:
            staging = root[self._staging]
            if staging.attrs.get("complete") is True and self.exists():
                self._apply_staging()
                note = "completed an interrupted out-of-order insert"
            else:
                self._discard_staging()
                note = "discarded an incomplete staging journal"
        elif self._journal_keys_left():  # a deletion cut short after its zarr.json went: never complete
            zarr.core.sync.sync(self._root_store.delete_dir(self._staging))
            note = "removed what was left of a discarded staging journal"
        if not self.exists() and self.product in root:  # exists() first: a damaged product raises, never dropped
            del root[self.product]
            note = "removed a product group whose creation never committed"
        elif self.exists():  # an append stopped before its commit (a kill, a full disk): free its chunks
            committed = self._committed_length()
            grown = zarr.open_array(self._zstore, path=VARIABLE, mode="r", zarr_format=3).shape[0]
            if grown > committed:
                self._shrink(committed)  # chunks first, then the arrays' own metadata; readers never saw them
                note = note or f"released {grown - committed} uncommitted frame(s) of an interrupted append"
        return note

    # -- description -------------------------------------------------------------------
    def size_on_disk(self) -> int:
        """Bytes under the product's group (local directory walk or fsspec ``du``)."""
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(self.store, storage_options=fsspec_options(self.storage_options))
        root = paths[0].rstrip("/") + "/" + self.product
        if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
            total = 0
            for dirpath, _, files in os.walk(root):
                total += sum(os.path.getsize(os.path.join(dirpath, name)) for name in files)
            return total
        return int(fs.du(root))


def list_products(store: str, storage_options: dict | None = None) -> list[str]:
    """Product groups in a store (staging journals excluded), damaged ones included.

    Listed from the store's keys rather than by parsing every child's metadata (zarr's
    ``group_keys``): one truncated ``zarr.json`` must not hide every other product. Opening a
    damaged product then raises ``DamagedProduct`` naming it."""
    zstore = open_zarr_store(store, storage_options, read_only=True)
    prototype = zarr.core.buffer.default_buffer_prototype()

    async def names() -> list[str]:
        if await zstore.get("zarr.json", prototype) is None:
            return []
        found = []
        async for name in zstore.list_dir(""):
            name = name.rstrip("/")
            if name.startswith("_") or name == "zarr.json":
                continue
            raw = await zstore.get(f"{name}/zarr.json", prototype)
            if raw is None:
                continue
            try:
                if json.loads(raw.to_bytes()).get("node_type") != "group":
                    continue
            except ValueError:  # damaged: listed, so that it is reported rather than vanishing
                pass
            found.append(name)
        return sorted(found)

    try:
        return zarr.core.sync.sync(names())
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []


def settle_pending_writes(timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` s) for the chunk writes still in flight after one of them failed.

    zarr writes a batch of chunks with ``asyncio.gather`` on its own event loop; when one write
    fails (a full disk) the others carry on. Releasing a journal before they end would race them
    (a late write re-creating a key just deleted), and at exit the interpreter prints every
    unfinished one ("Task was destroyed but it is pending!")."""
    import asyncio

    async def settle() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=timeout)

    zarr.core.sync.sync(settle())


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a full disk or an exhausted quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def store_problem(exc: BaseException, store: str) -> str | None:
    """One line saying why the store itself cannot be used (bucket, credentials, network), when
    ``exc`` (or what it wraps) says so; None for every other error."""
    seen: BaseException | None = exc
    while seen is not None:
        name, text = type(seen).__name__, str(seen)
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return (f"{store}: no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or an AWS profile, or the store's storage options)")
        if isinstance(seen, PermissionError) or any(
                code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")):
            return (f"{store}: access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) "
                    "and the bucket's policy")
        if isinstance(seen, FileNotFoundError) and "bucket" in text.lower():
            return f"{store}: the bucket does not exist: create it, or correct the URL"
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(
                seen, ConnectionError):
            return (f"{store}: cannot reach the object store ({text[:160]}): check FSSPEC_S3_ENDPOINT_URL "
                    "and the network")
        seen = seen.__cause__ or seen.__context__
    return None
