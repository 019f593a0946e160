"""Synchronous reads of a local Zarr v3 array's Blosc chunks, past zarr's async machinery.

Why: a training window (12 frames, a 128-256 px crop) touches 12-48 small chunks. Through
``zarr.Array.__getitem__`` every read is handed to zarr's event-loop thread and each chunk's
Blosc decode to a worker thread; on a 2-core machine that hand-off cost as much as the
decompression itself. Reading the chunk files here and decompressing them in the calling
thread gives the same values (``tests/test_dataset.py`` compares them with zarr's own read);
docs/performance.md, "Data path", has the measurements.

Only the layout ``pipelines.store`` writes is taken this way: a local store, a regular chunk
grid, the ``bytes`` codec (little-endian) optionally followed by ``blosc``, optionally followed by
``crc32c`` (checked here as zarr's codec checks it; a damaged or, in a checksummed array, missing
chunk raises ``pipelines.integrity.DamagedChunk``, as reads through zarr do). Anything else
(object stores, sharding, other codecs, fancy indexing) goes through zarr unchanged.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import OrderedDict
from itertools import product
from typing import Any

import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.storage import LocalStore

from pipelines.integrity import DamagedChunk, crc32c_ok, frame_time, store_label
from pipelines.store import decode_rain

#: Bytes of decoded chunks kept per array, from single-frame reads only: the rain-fraction
#: crop tries read crops of one frame and the window read then reads that frame again. 8 MiB
#: holds a whole FMI or MeteoSwiss frame of uint16. Multi-frame reads look chunks up but do
#: not keep them, so a window read does not evict them on its way.
CACHE_BYTES = 8 << 20


def _eligible(array: zarr.Array) -> bool:
    """True for the layout this module reads itself (what pipelines.store writes, locally)."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store_path.store, LocalStore):
        return False
    if not isinstance(getattr(meta, "chunk_grid", None), zarr.core.chunk_grids.RegularChunkGrid):
        return False
    codecs = tuple(meta.codecs)
    if codecs and isinstance(codecs[-1], Crc32cCodec):
        codecs = codecs[:-1]
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return False
    endian = codecs[0].endian
    if endian is not None and endian.value != sys.byteorder:
        return False
    if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
        return False
    dtype = np.dtype(array.dtype)
    return dtype.kind in "uif" and array.fill_value is not None


class LocalChunkArray(zarr.Array):
    """A read-only ``zarr.Array`` whose basic slicing (ints and step-1 slices) reads and
    decompresses chunk files in the calling thread, keeping the last few decoded chunks."""

    def __init__(self, array: zarr.Array):
        super().__init__(array._async_array)
        self._root = os.path.join(str(array.store_path.store.root), array.store_path.path)
        self._chunk_shape = tuple(int(c) for c in array.metadata.chunk_grid.chunk_shape)
        codecs = tuple(array.metadata.codecs)
        self._checksummed = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        self._compressed = len(codecs) - self._checksummed == 2
        self._dtype = np.dtype(array.dtype).newbyteorder("=")
        self._fill = np.array(array.fill_value, dtype=self._dtype)
        self._chunks: OrderedDict[tuple[int, ...], tuple[tuple[int, int, int], np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("LocalChunkArray holds per-process state; reopen it in each process")

    def _chunk(self, coords: tuple[int, ...], keep: bool) -> np.ndarray | None:
        """The decoded chunk at ``coords`` (None when never written: it reads as fill_value).

        The cache is keyed by the file's identity (inode, size, mtime): the store replaces a
        chunk by writing a new file and renaming it, so a rewritten chunk is never served stale."""
        path = os.path.join(self._root, self.metadata.encode_chunk_key(coords))
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                hit = self._chunks.get(coords)
                if hit is not None and hit[0] == stamp:
                    self._chunks.move_to_end(coords)
                    return hit[1]
                data = f.read()
        except FileNotFoundError:
            if self._checksummed:  # written with every chunk present: absence is damage, not nodata
                raise self._damaged(coords, "missing (a committed frame's chunk is absent)") from None
            return None
        if self._checksummed:
            if not crc32c_ok(data):
                raise self._damaged(coords, "checksum mismatch (corrupted or truncated)")
            data = memoryview(data)[:-4]
        chunk = np.empty(self._chunk_shape, dtype=self._dtype)
        try:
            if self._compressed:
                numcodecs.blosc.decompress(data, chunk)
            else:
                chunk.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        except (RuntimeError, ValueError) as exc:  # an unchecksummed (older) store's damaged chunk
            raise self._damaged(coords, f"cannot be decoded ({exc})") from exc
        if keep:
            self._chunks[coords] = (stamp, chunk)
            while len(self._chunks) * chunk.nbytes > CACHE_BYTES:
                self._chunks.popitem(last=False)
        return chunk

    def _damaged(self, coords: tuple[int, ...], reason: str) -> DamagedChunk:
        """The error naming this chunk's product, frame time and key."""
        store = self.store_path.store
        path = self.store_path.path
        key = f"{path}/{self.metadata.encode_chunk_key(coords)}" if path else self.metadata.encode_chunk_key(coords)
        return DamagedChunk(store_label(store), key, reason, frame_time(store, path, coords[0]) if coords else None)

    def _basic(self, selection: Any) -> list[slice | int] | None:
        """The selection as one int or step-1 slice per dimension, or None (let zarr do it)."""
        if not isinstance(selection, tuple):
            selection = (selection,)
        if any(s is Ellipsis for s in selection):
            if sum(s is Ellipsis for s in selection) > 1:
                return None
            i = selection.index(Ellipsis)
            selection = selection[:i] + (slice(None),) * (self.ndim - len(selection) + 1) + selection[i + 1 :]
        if len(selection) > self.ndim:
            return None
        selection = selection + (slice(None),) * (self.ndim - len(selection))
        out: list[slice | int] = []
        for sel, n in zip(selection, self.shape, strict=True):
            if isinstance(sel, slice):
                start, stop, step = sel.indices(n)
                if step != 1:
                    return None
                out.append(slice(start, max(start, stop)))
            elif isinstance(sel, (int, np.integer)) and not isinstance(sel, bool):
                i = int(sel) + n if sel < 0 else int(sel)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(sel)} is out of bounds for axis with size {n}")
                out.append(i)
            else:
                return None
        return out

    def __getitem__(self, selection: Any) -> Any:
        sel = self._basic(selection)
        if sel is None:
            return super().__getitem__(selection)
        bounds = [(s, s + 1) if isinstance(s, int) else (s.start, s.stop) for s in sel]
        out = np.empty([hi - lo for lo, hi in bounds], dtype=self._dtype)
        if out.size:
            ranges = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(bounds, self._chunk_shape, strict=True)]
            keep = len(ranges[0]) == 1 and bounds[0][1] - bounds[0][0] == 1
            for coords in product(*ranges):
                src, dst = [], []
                for (lo, hi), c, k in zip(bounds, self._chunk_shape, coords, strict=True):
                    a, b = max(lo, k * c), min(hi, (k + 1) * c)
                    src.append(slice(a - k * c, b - k * c))
                    dst.append(slice(a - lo, b - lo))
                chunk = self._chunk(coords, keep)
                out[tuple(dst)] = self._fill if chunk is None else chunk[tuple(src)]
        squeeze = tuple(i for i, s in enumerate(sel) if isinstance(s, int))
        return out.reshape([n for i, n in enumerate(out.shape) if i not in squeeze]) if squeeze else out


def local_chunk_array(array: zarr.Array) -> zarr.Array:
    """``array`` read through LocalChunkArray where its layout allows, else ``array`` itself."""
    try:
        return LocalChunkArray(array) if _eligible(array) else array
    except (AttributeError, TypeError, ValueError):  # another zarr version's internals: stay on zarr
        return array


@functools.lru_cache(maxsize=8)
def decode_table(dtype: np.dtype, scale: float, fill: Any) -> np.ndarray:
    """Every 8/16-bit code -> float32 mm/h (NaN at ``fill``), by the arithmetic of
    ``SequenceDataset._decode``'s general path, so a gather from it gives the same bits."""
    codes = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    table = decode_rain(codes, scale, fill)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=8)
def model_space_tables(dtype: np.dtype, scale: float, fill: Any, normalizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every 8/16-bit code -> normalised value (nodata -> 0), and -> valid. Made by the same decode
    and ``normalizer.forward`` calls on the same float32 rates as the float path, so a gather from
    them gives the same bits without a log1p over every pixel of every window."""
    rate = decode_table(dtype, scale, fill)
    z = np.asarray(normalizer.forward(np.nan_to_num(rate, nan=0.0)), dtype=np.float32)
    valid = ~np.isnan(rate)
    z.flags.writeable = valid.flags.writeable = False
    return z, valid
