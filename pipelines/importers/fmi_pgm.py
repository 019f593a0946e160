"""FMI Finland composite: gzipped PGM in dBZ (pysteps ``import_fmi_pgm``)."""

from __future__ import annotations

import gzip
import re
from datetime import datetime
from pathlib import Path

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import pysteps_importers, utc


def _header(path: Path, gzipped: bool) -> bytes:
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        return f.read(4096)


def sniff(path: Path, head: bytes) -> bool:
    gzipped = head[:2] == b"\x1f\x8b"
    text = _header(path, gzipped) if gzipped else head
    return text[:2] == b"P5" and b"obstime" in text


def read(path: Path) -> RawFrame:
    gzipped = path.suffix == ".gz"
    header = _header(path, gzipped).decode("latin-1")
    match = re.search(r"#\s*obstime\s+(\d{12})", header)
    if not match:
        raise ValueError(f"{path.name}: PGM header has no '# obstime' line")
    data, _, meta = pysteps_importers().import_fmi_pgm(str(path), gzipped=gzipped)
    return RawFrame(
        time=utc(datetime.strptime(match.group(1), "%Y%m%d%H%M")),
        data=data,
        unit="dBZ",
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        accutime_minutes=None,
        zr_a=float(meta["zr_a"]),
        zr_b=float(meta["zr_b"]),
        threshold=float(meta["threshold"]),
        attrs={"provider": meta.get("institution", "FMI"), "source_product": "FMI composite CAPPI"},
    )
