"""``nowcast store check``: read every chunk and metadata file of a store and name what is damaged.

Why a separate pass: reads only meet the chunks they need, so a damaged frame nobody asks for
stays hidden until the day it is needed. This reads every ``zarr.json`` and every chunk of every
committed frame, checks checksums (arrays written with ``crc32c``), presence (the same arrays
keep every chunk), decoding (older arrays) and the time index (strictly increasing), and reports
each damaged frame by product, valid time and chunk key. ``repair`` then drops what cannot be
read (``ProductArchive.drop_frames``; metadata rebuilt from its other copy), so re-ingesting the
source files restores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from pipelines.cf import CONVENTIONS, VARIABLE
from pipelines.chunk_read import LocalChunkArray, local_chunk_array
from pipelines.integrity import DamagedData, decode_time, has_checksum
from pipelines.store import ProductArchive, list_products

#: arrays indexed by time in a product group (checked frame by frame)
TIME_ARRAYS = (VARIABLE,)


@dataclass
class Damage:
    """One damaged thing: a chunk of a frame, or a metadata file."""

    key: str
    reason: str
    time: str | None = None
    frame: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def line(self, product: str) -> str:
        when = f" at {self.time}" if self.time else (f" frame {self.frame}" if self.frame is not None else "")
        return f"product '{product}'{when}, {self.key}: {self.reason}"


@dataclass
class ProductCheck:
    product: str
    frames: int = 0
    chunks_checked: int = 0
    checksummed: bool = False
    damage: list[Damage] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def damaged_frames(self) -> list[int]:
        return sorted({d.frame for d in self.damage if d.frame is not None})

    def as_dict(self) -> dict[str, Any]:
        return {"product": self.product, "status": "damaged" if self.damage else "ok", "frames": self.frames,
                "chunks_checked": self.chunks_checked, "checksummed": self.checksummed,
                "damaged_frames": len(self.damaged_frames), "damage": [d.as_dict() for d in self.damage],
                "repaired": self.repaired}


def _get(zstore: Any, key: str) -> bytes | None:
    raw = zarr.core.sync.sync(zstore.get(key, zarr.core.buffer.default_buffer_prototype()))
    return None if raw is None else raw.to_bytes()


def _metadata(zstore: Any, key: str, report: ProductCheck) -> dict | None:
    """A parsed ``zarr.json`` (None, with the damage noted, when absent or not valid JSON)."""
    raw = _get(zstore, key)
    if raw is None:
        report.damage.append(Damage(f"{report.product}/{key}", "missing"))
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        report.damage.append(Damage(f"{report.product}/{key}", f"not valid JSON ({exc})"))
        return None


def _read_times(zstore: Any, meta: dict, report: ProductCheck) -> list[str | None]:
    """Each committed frame's time as text (None where the time chunk is damaged)."""
    n = int(meta["shape"][0])
    chunk = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    units = meta.get("attributes", {}).get("units")
    out: list[str | None] = [None] * n
    values = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    array = zarr.open_array(zstore, path="time", mode="r", zarr_format=3)
    for block in range((n + chunk - 1) // chunk):
        lo, hi = block * chunk, min(n, (block + 1) * chunk)
        report.chunks_checked += 1
        try:
            values[lo:hi] = array[lo:hi]
        except Exception as exc:  # DamagedChunk, or a decode error in an older store
            reason = exc.reason if hasattr(exc, "reason") else f"cannot be read ({type(exc).__name__}: {exc})"
            for i in range(lo, hi):  # every frame of the chunk has lost its time
                report.damage.append(Damage(f"time/c/{block}", reason, frame=i))
            continue
        for i in range(lo, hi):
            out[i] = decode_time(values[i], units)
    good = values != np.iinfo(np.int64).min
    idx = np.nonzero(good)[0]
    for a, b in zip(idx[:-1], idx[1:], strict=True):  # times must increase: a fill value or a stray write breaks it
        if values[b] <= values[a]:
            report.damage.append(Damage(f"time/c/{b // chunk}", f"time {out[b]} does not follow {out[a]} "
                                        "(overwritten or fill value)", out[b], int(b)))
    return out


def _check_frames(zstore: Any, meta: dict, times: list[str | None], report: ProductCheck) -> None:
    """Every chunk of every committed frame of the rain array."""
    array = zarr.open_array(zstore, path=VARIABLE, mode="r", zarr_format=3)
    shape = [int(s) for s in meta["shape"]]
    chunks = [int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
    fast = local_chunk_array(array)
    n_frames = min(shape[0], len(times))
    grid = [range((s + c - 1) // c) for s, c in zip(shape[1:], chunks[1:], strict=True)]
    for t in range(n_frames):
        for coords in np.ndindex(*[len(g) for g in grid]):
            report.chunks_checked += 1
            key = f"{VARIABLE}/c/{t}/" + "/".join(str(c) for c in coords)
            try:
                if isinstance(fast, LocalChunkArray):
                    fast._chunk((t, *coords), keep=False)
                else:
                    array.blocks[(t, *coords)]
            except DamagedData as exc:
                report.damage.append(Damage(key, getattr(exc, "reason", str(exc)), times[t], t))
            except Exception as exc:  # an older (unchecksummed) store's chunk that does not decode
                report.damage.append(Damage(key, f"cannot be decoded ({type(exc).__name__}: {exc})", times[t], t))
    if shape[0] != len(times):
        report.damage.append(Damage(f"{VARIABLE}/zarr.json", f"{shape[0]} frames of rain for {len(times)} times"))


def check_product(store: str, product: str, storage_options: dict | None = None) -> ProductCheck:
    """Read everything of one product; the damage found, nothing changed."""
    archive = ProductArchive(store, product, storage_options)
    zstore = archive._zstore.with_read_only(True)
    report = ProductCheck(product)
    group = _metadata(zstore, "zarr.json", report)
    consolidated = (group or {}).get("consolidated_metadata") or {}
    members = consolidated.get("metadata") or {}
    if group is not None and not members:
        return report  # a creation that never committed: not data, the next write removes it
    names = sorted(set(members) | {VARIABLE, "time"})
    arrays: dict[str, dict] = {}
    for name in names:
        meta = _metadata(zstore, f"{name}/zarr.json", report)
        if meta is not None:
            arrays[name] = meta
    if group is None or VARIABLE not in arrays or "time" not in arrays:
        return report  # the frames cannot be located: repair rebuilds the metadata first
    # the committed extent is the consolidated one (an uncommitted append may have grown the arrays)
    committed = {name: members.get(name, arrays[name]) for name in (VARIABLE, "time")}
    report.frames = int(committed["time"]["shape"][0])
    report.checksummed = has_checksum(arrays[VARIABLE].get("codecs"))
    times = _read_times(zstore, committed["time"], report)
    _check_frames(zstore, committed[VARIABLE], times, report)
    for name in sorted(set(arrays) - {VARIABLE, "time"}):  # coordinates and the CRS: small, read whole
        try:
            zarr.open_array(zstore, path=name, mode="r", zarr_format=3)[...]
            report.chunks_checked += 1
        except Exception as exc:
            report.damage.append(Damage(f"{name}", getattr(exc, "reason", f"cannot be read ({exc})")))
    return report


def _write_json(zstore: Any, key: str, doc: dict) -> None:
    buffer = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(json.dumps(doc, indent=2).encode())
    zarr.core.sync.sync(zstore.set(key, buffer))


def repair_product(store: str, report: ProductCheck, storage_options: dict | None = None) -> None:
    """Make a damaged product readable again: metadata rebuilt from its other copy where one is
    sound, damaged frames dropped (``ProductArchive.drop_frames``); what was done goes into
    ``report.repaired``. A product whose metadata has no sound copy is dropped whole."""
    archive = ProductArchive(store, report.product, storage_options)
    zstore = archive._zstore
    product = report.product
    with archive.writer_lock():
        meta_damage = [d for d in report.damage if d.key.endswith("zarr.json")]
        if meta_damage:
            group_raw = _get(zstore, "zarr.json")
            group = None
            try:
                group = json.loads(group_raw) if group_raw else None
            except ValueError:
                pass
            members = ((group or {}).get("consolidated_metadata") or {}).get("metadata") or {}
            if group is not None and members:  # an array's zarr.json: rewrite it from the consolidated copy
                for damage in meta_damage:
                    name = damage.key.removeprefix(f"{product}/").removesuffix("/zarr.json")
                    if name in members and name != "zarr.json":
                        _write_json(zstore, f"{name}/zarr.json", members[name])
                        report.repaired.append(f"{product}/{name}/zarr.json rewritten from the consolidated metadata")
            else:  # the group's own: rebuild it from the arrays' (the product's descriptive attributes are lost)
                if _rebuild_group(zstore, product):
                    report.repaired.append(f"{product}/zarr.json rebuilt from its arrays' metadata (descriptive "
                                           "attributes such as provider and source_product were lost)")
                else:
                    zarr.core.sync.sync(zstore.delete_dir(""))
                    report.repaired.append(f"product '{product}' dropped: no sound copy of its metadata "
                                           "(re-ingest its source files)")
                    return
    recheck = check_product(store, product, storage_options) if report.repaired else report
    frames = recheck.damaged_frames
    if frames:
        dropped = archive.drop_frames(frames)
        report.repaired.append(f"dropped {dropped} damaged frame(s) of '{product}' "
                               f"({', '.join(d.time or f'frame {d.frame}' for d in _first_per_frame(recheck))}); "
                               "re-ingest their source files to restore them")


def _first_per_frame(report: ProductCheck) -> list[Damage]:
    seen: dict[int, Damage] = {}
    for damage in report.damage:
        if damage.frame is not None:
            seen.setdefault(damage.frame, damage)
    return [seen[k] for k in sorted(seen)]


def _rebuild_group(zstore: Any, product: str) -> bool:
    """A fresh group ``zarr.json`` around the arrays whose own metadata parses, then consolidated."""
    names = []

    async def children() -> list[str]:
        return [name.rstrip("/") async for name in zstore.list_dir("")]

    for name in zarr.core.sync.sync(children()):
        raw = _get(zstore, f"{name}/zarr.json")
        try:
            if raw is not None and json.loads(raw).get("node_type") == "array":
                names.append(name)
        except ValueError:
            return False
    if VARIABLE not in names or "time" not in names:
        return False
    _write_json(zstore, "zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": {
        "Conventions": CONVENTIONS, "product": product, "title": f"{product} rain rate",
        "repaired": "group metadata rebuilt by nowcast store check --repair"}})
    zarr.consolidate_metadata(zstore, zarr_format=3)
    return True


def check_store(store: str, product: str | None = None, repair: bool = False,
                storage_options: dict | None = None) -> dict[str, Any]:
    """Check (and with ``repair`` mend) every product of a store, or one; a JSON-able report."""
    products = [product] if product else list_products(store, storage_options)
    if product and product not in list_products(store, storage_options):
        raise KeyError(f"no product {product!r} in {store} (products: {list_products(store, storage_options)})")
    reports = []
    for name in products:
        report = check_product(store, name, storage_options)
        if repair and report.damage:
            repair_product(store, report, storage_options)
        reports.append(report)
    damaged = [r.product for r in reports if r.damage]
    return {"store": store, "status": "damaged" if damaged else "ok", "damaged_products": damaged,
            "products": [r.as_dict() for r in reports],
            "lines": [d.line(r.product) for r in reports for d in r.damage]}
