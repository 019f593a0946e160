"""MeteoSwiss composites as GIF (AQC/CPC accumulations, RZC rain rate; pysteps ``import_mch_gif``)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import pysteps_importers, utc

#: product code -> unit in the file
_UNITS = {"AQC": "mm", "CPC": "mm", "AZC": "mm", "RZC": "mm/h"}
#: e.g. AQC151351545F_00005.801.gif: product, yy, day of year, HHMM, ..., accumulation minutes
_NAME = re.compile(r"^(AQC|CPC|AZC|RZC)(\d{2})(\d{3})(\d{4})\w_(\d{5})\.\d+\.gif$", re.IGNORECASE)


def sniff(path: Path, head: bytes) -> bool:
    return head[:4] == b"GIF8" and bool(_NAME.match(path.name))


def read(path: Path) -> RawFrame:
    match = _NAME.match(path.name)
    if not match:
        raise ValueError(f"{path.name}: not a MeteoSwiss composite name like AQC151351545F_00005.801.gif")
    product = match.group(1).upper()
    time = utc(datetime.strptime(match.group(2) + match.group(3) + match.group(4), "%y%j%H%M"))
    accutime = float(int(match.group(5)))
    unit = _UNITS[product]
    data, _, meta = pysteps_importers().import_mch_gif(
        str(path), product=product, unit=unit, accutime=accutime
    )
    return RawFrame(
        time=time,
        data=data,
        unit=unit,
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        accutime_minutes=accutime if unit == "mm" else None,
        attrs={"provider": meta.get("institution", "MeteoSwiss"), "source_product": product},
    )
