"""Damaged data is detected and named, never served: checksummed chunks and the errors that say where.

Why a store wrapper and not only zarr's ``crc32c`` codec: the codec finds a flipped byte but its
error names no array, chunk or time, and zarr reads a missing chunk as the fill value (nodata),
silently. ``CheckedLocalStore`` / ``CheckedFsspecStore`` check each chunk of a checksummed array
as it is fetched, where the key is known, and raise ``DamagedChunk`` naming the product, the
frame's valid time and the chunk key. Arrays without the codec (stores written before
checksums) are read as before: a chunk there may legitimately be absent (all nodata).

New arrays carry the codec and are written with ``write_empty_chunks``, so every chunk of every
committed frame exists: a missing one in a read-only open is damage, not nodata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import FsspecStore, LocalStore

try:  # SSE4.2 crc32c: 1 us per 20 kB chunk where google_crc32c's build here takes 77 (docs/storage.md)
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - the dependency is declared; google_crc32c comes with zarr
    from google_crc32c import value as _crc32c

#: exit status of commands that met damaged data (sysexits' EX_DATAERR)
EXIT_DAMAGED = 65
#: what zarr v3 calls the codec in an array's metadata
CHECKSUM_CODEC = "crc32c"
#: the compressors of arrays the archive writes besides rain (zarr's default, plus the checksum)
DEFAULT_COMPRESSORS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())


class DamagedData(Exception):
    """Something the archive committed cannot be read back as written (the base of the others)."""

    def __init__(self, message: str, product: str | None = None):
        super().__init__(message)
        self.product = product

    def __reduce__(self) -> tuple:
        """Picklable across processes (Dask workers, data-loader workers) with its fields."""
        return (_restore, (type(self), str(self), dict(self.__dict__)))


def _restore(cls: type[DamagedData], message: str, state: dict) -> DamagedData:
    exc = Exception.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class DamagedChunk(DamagedData):
    """One chunk of a committed frame is missing, truncated or fails its checksum."""

    def __init__(self, product: str, key: str, reason: str, time: str | None = None):
        when = f" at {time}" if time else ""
        super().__init__(f"damaged data: product '{product}'{when}, chunk {key}: {reason}", product)
        self.key, self.reason, self.time = key, reason, time


class DamagedProduct(DamagedData):
    """A product's metadata (a ``zarr.json``) cannot be parsed: the product cannot be opened."""

    def __init__(self, product: str, key: str, reason: str):
        super().__init__(f"damaged product '{product}': {key}: {reason} "
                         "(nowcast store check --repair rebuilds or drops it)", product)
        self.key, self.reason = key, reason


class DamagedRecord(DamagedData):
    """A verification record (or another small group) cannot be read; the rest carry on."""


def crc32c_ok(data: bytes | np.ndarray) -> bool:
    """True when the last 4 bytes are the little-endian crc32c of the rest (zarr's codec layout)."""
    view = memoryview(data).cast("B")
    if len(view) < 4:
        return False
    return _crc32c(view[:-4]).to_bytes(4, "little") == bytes(view[-4:])


@dataclass(frozen=True)
class FastCrc32cCodec(Crc32cCodec):
    """zarr's ``crc32c`` codec, byte for byte, computed with the hardware-accelerated ``crc32c``
    package: zarr's own uses google_crc32c, whose build here is ~70x slower, which halved the
    archive's read rate (bench/checksum_cost.py). Selected for the name ``crc32c`` below."""

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        data = chunk_bytes.as_numpy_array()
        if not crc32c_ok(data):
            raise ValueError("Stored and computed checksum do not match.")
        return chunk_spec.prototype.buffer.from_array_like(data[:-4])

    def _encode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        data = chunk_bytes.as_numpy_array()
        checksum = np.frombuffer(_crc32c(memoryview(data).cast("B")).to_bytes(4, "little"), dtype=np.uint8)
        return chunk_spec.prototype.buffer.from_array_like(np.concatenate([data.view(np.uint8).ravel(), checksum]))


zarr.registry.register_codec(CHECKSUM_CODEC, FastCrc32cCodec)
zarr.config.set({f"codecs.{CHECKSUM_CODEC}": zarr.registry.fully_qualified_name(FastCrc32cCodec)})


def blosc_size_ok(data: bytes) -> bool:
    """True when a Blosc frame is as long as its header says (bytes 12-16: the compressed size)."""
    return len(data) >= 16 and int.from_bytes(data[12:16], "little") == len(data)


def has_checksum(codecs: Any) -> bool:
    """True when an array's codecs (metadata objects or their JSON) end with the checksum."""
    for codec in codecs or ():
        name = codec.get("name") if isinstance(codec, dict) else getattr(codec, "to_dict", dict)().get("name")
        if name == CHECKSUM_CODEC:
            return True
    return False


def split_chunk_key(key: str) -> tuple[str, tuple[int, ...]] | None:
    """``'precip/c/3/0/1'`` -> ``('precip', (3, 0, 1))``; None for a key that is not a chunk."""
    head, sep, tail = key.rpartition("/c/")
    if not sep:
        if key.startswith("c/"):
            head, tail = "", key[2:]
        else:
            return None
    try:
        return head, tuple(int(p) for p in tail.split("/"))
    except ValueError:
        return None


def store_label(zstore: Any) -> str:
    """The product a product store holds (its last path part), marked when it is a merge journal."""
    root = getattr(zstore, "root", None) or getattr(zstore, "path", "") or str(zstore)
    path = PurePosixPath(str(root).rstrip("/"))
    if path.parent.name == "_staging":
        return f"{path.name} (merge journal)"
    return path.name or str(root)


def decode_time(value: Any, units: str | None) -> str | None:
    """A stored CF time (``<unit> since <epoch>``) as UTC ISO text."""
    if units is None or " since " not in units:
        return None
    unit, _, epoch = units.partition(" since ")
    code = {"seconds": "s", "minutes": "m", "hours": "h", "days": "D"}.get(unit.strip())
    if code is None:
        return None
    base = np.datetime64(epoch.strip().replace(" ", "T").rstrip("Z"), "s")
    return str(base + np.timedelta64(int(value), code).astype("timedelta64[s]")) + "Z"


def _time_path(array_path: str) -> str:
    parent = array_path.rpartition("/")[0]
    return f"{parent}/time" if parent else "time"


async def frame_time_async(zstore: Any, array_path: str, index: int) -> str | None:
    """The valid time of frame ``index`` of ``array_path``'s group, read through zarr's async API
    (callable from inside a store's ``get``, which runs on zarr's event loop); None if unknown."""
    if array_path.rpartition("/")[2] == "time":
        return None
    try:
        times = await zarr.api.asynchronous.open_array(store=zstore, path=_time_path(array_path), mode="r",
                                                       zarr_format=3)
        value = await times.getitem(index)
        return decode_time(value, times.attrs.get("units"))
    except Exception:  # the time index is itself damaged or absent: the chunk key still names the frame
        return None


def frame_time(zstore: Any, array_path: str, index: int) -> str | None:
    """``frame_time_async`` for synchronous callers (not on zarr's event loop)."""
    if array_path.rpartition("/")[2] == "time":
        return None
    try:
        times = zarr.open_array(zstore, path=_time_path(array_path), mode="r", zarr_format=3)
        return decode_time(times[index], times.attrs.get("units"))
    except Exception:
        return None


class _Checked:
    """The chunk checks, mixed into a zarr store class (``get`` and ``with_read_only`` keep them)."""

    _array_codecs: dict[str, tuple[str, ...]]

    async def _codecs(self, array_path: str, prototype: Any) -> tuple[str, ...]:
        """The names of an array's codecs, from its ``zarr.json`` (read once per store object)."""
        cache = self.__dict__.setdefault("_array_codecs", {})
        if array_path not in cache:
            key = f"{array_path}/zarr.json" if array_path else "zarr.json"
            buf = await super().get(key, prototype)  # type: ignore[misc]
            try:
                codecs = json.loads(buf.to_bytes()).get("codecs") or [] if buf is not None else []
                cache[array_path] = tuple(c.get("name", "") if isinstance(c, dict) else str(c) for c in codecs)
            except (ValueError, AttributeError):  # damaged metadata: reported where it is opened
                cache[array_path] = ()
        return cache[array_path]

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if prototype is None:
            prototype = zarr.core.buffer.default_buffer_prototype()
        buf = await super().get(key, prototype, byte_range)  # type: ignore[misc]
        parsed = split_chunk_key(key) if byte_range is None else None
        if parsed is None:
            return buf
        codecs = await self._codecs(parsed[0], prototype)
        if not codecs or codecs[-1] != CHECKSUM_CODEC:
            # an older array (no checksum): a flipped byte cannot be seen, a truncated Blosc chunk can
            if buf is not None and codecs and codecs[-1] == "blosc" and not blosc_size_ok(buf.to_bytes()):
                raise await self._damaged(key, parsed, "truncated (shorter than its Blosc header says)")
            return buf
        if buf is None:
            # writers read chunks they are about to fill (read-modify-write): absence is fine there
            if self.read_only:  # type: ignore[attr-defined]
                raise await self._damaged(key, parsed, "missing (a committed frame's chunk is absent)")
            return None
        if not crc32c_ok(buf.as_numpy_array()):
            raise await self._damaged(key, parsed, "checksum mismatch (corrupted or truncated)")
        return buf

    async def _damaged(self, key: str, parsed: tuple[str, tuple[int, ...]], reason: str) -> DamagedChunk:
        array_path, coords = parsed
        when = await frame_time_async(self, array_path, coords[0]) if coords else None
        return DamagedChunk(store_label(self), key, reason, when)


class CheckedLocalStore(_Checked, LocalStore):
    """A LocalStore whose chunk reads are checked (``pipelines.integrity``)."""


class CheckedFsspecStore(_Checked, FsspecStore):
    """An FsspecStore whose chunk reads are checked (``pipelines.integrity``)."""


def damaged_from(exc: BaseException) -> DamagedData | None:
    """The DamagedData that ``exc`` is or wraps (dask and xarray may wrap it), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DamagedData):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


#: the last line of a traceback that ended in DamagedData, as it reaches another process in text
_DAMAGE_LINE = re.compile(r"^(?:\w+\.)*Damaged(?:Data|Chunk|Product|Record): (.+)$", re.MULTILINE)


def damage_message(exc: BaseException) -> str | None:
    """The one-line message of the damaged data behind ``exc``, else None: a ``DamagedData`` that
    ``exc`` is or wraps, or one raised in another process that reached this one as text. A
    data-loader worker's exception reaches the trainer as a RuntimeError holding only the worker's
    traceback (torch rebuilds it from its type and text, which DamagedChunk's fields do not fit)."""
    found = damaged_from(exc)
    if found is not None:
        return str(found)
    seen: BaseException | None = exc
    while seen is not None:
        lines = _DAMAGE_LINE.findall(str(seen))
        if lines:
            return lines[-1].strip()
        seen = seen.__cause__ or seen.__context__
    return None
