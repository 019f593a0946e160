"""ODIM_H5 composites: national services and EUMETNET OPERA (pysteps ``import_odim_hdf5``).

The quantity is chosen from what the file holds: RATE, else ACRR, else DBZH.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import h5py

from pipelines.frame import RawFrame
from pipelines.grid import Grid
from pipelines.importers._common import HDF5_MAGIC, decode_attr, pysteps_importers, utc

_PREFERENCE = ("RATE", "ACRR", "DBZH")
#: Marshall-Palmer, used when a DBZH file carries no Z-R relation
_DEFAULT_ZR = (200.0, 1.6)


def sniff(path: Path, head: bytes) -> bool:
    if head[:8] != HDF5_MAGIC:
        return False
    with h5py.File(path, "r") as f:
        return "what" in f and "object" in f["what"].attrs and "dataset1" in f


def _quantities(f: h5py.File) -> set[str]:
    found = set()
    for name, group in f.items():
        if not name.startswith("dataset"):
            continue
        # ODIM allows "what" (with the quantity) on the dataset or on each of its data groups
        if "what" in group and "quantity" in group["what"].attrs:
            found.add(decode_attr(group["what"].attrs["quantity"]))
        for sub_name, sub in group.items():
            if sub_name.startswith("data") and "what" in sub and "quantity" in sub["what"].attrs:
                found.add(decode_attr(sub["what"].attrs["quantity"]))
    return found


#: WMO originating centres (Manual on Codes, common code table C-11) of common ODIM producers
ORIGINATING_CENTRES = {
    "74": "UK Met Office", "78": "Deutscher Wetterdienst", "82": "SMHI", "86": "Finnish Meteorological Institute",
    "88": "Norwegian Meteorological Institute", "94": "Danish Meteorological Institute",
    "99": "KNMI - Royal Netherlands Meteorological Institute", "215": "MeteoSwiss", "247": "EUMETNET OPERA",
}


def originating_centre(source: str) -> str | None:
    """The producer named by ODIM's ``what/source`` (``ORG:`` a WMO centre number, else ``NOD:``/``CTY:``)."""
    pairs = [tuple(x.strip() for x in part.split(":", 1)) for part in source.split(",") if ":" in part]
    fields: dict[str, str] = {}
    for key, value in pairs:  # the first of each: a composite lists its radars after its originator
        fields.setdefault(key, value)
    nodes = [value for key, value in pairs if key == "NOD"]
    if fields.get("ORG"):
        return ORIGINATING_CENTRES.get(fields["ORG"], f"WMO originating centre {fields['ORG']}")
    if len(nodes) > 1:  # a composite naming its radars, not its maker: the country, else say what it is
        if fields.get("CTY"):
            return f"WMO country {fields['CTY']}"
        return f"ODIM composite of {len(nodes)} radars ({', '.join(nodes[:3])}{', ...' if len(nodes) > 3 else ''})"
    if nodes:
        return f"ODIM node {nodes[0]}"
    if fields.get("CTY"):
        return f"WMO country {fields['CTY']}"
    return None


def read(path: Path) -> RawFrame:
    with h5py.File(path, "r") as f:
        what = f["what"].attrs
        time = utc(datetime.strptime(decode_attr(what["date"]) + decode_attr(what["time"]), "%Y%m%d%H%M%S"))
        source = decode_attr(what.get("source", b""))
        quantities = _quantities(f)
    qty = next((q for q in _PREFERENCE if q in quantities), None)
    if qty is None:
        raise ValueError(f"{path.name}: no RATE, ACRR or DBZH dataset (found {sorted(quantities)})")
    data, _, meta = pysteps_importers().import_odim_hdf5(str(path), qty=qty)
    unit = {"RATE": "mm/h", "ACRR": "mm", "DBZH": "dBZ"}[qty]
    zr_a, zr_b = (meta.get("zr_a"), meta.get("zr_b")) if unit == "dBZ" else (None, None)
    if unit == "dBZ" and (zr_a is None or zr_b is None):
        zr_a, zr_b = _DEFAULT_ZR
    accutime = float(meta["accutime"]) if meta.get("accutime") else None
    return RawFrame(
        time=time,
        data=data,
        unit=unit,
        grid=Grid.from_pysteps_metadata(data.shape, meta),
        accutime_minutes=accutime if unit == "mm" else None,
        zr_a=zr_a,
        zr_b=zr_b,
        threshold=float(meta["threshold"]) if unit == "dBZ" and meta.get("threshold") is not None else None,
        attrs={
            "provider": originating_centre(source) or meta.get("institution", "ODIM"),
            "source_product": f"ODIM {qty} {source}".strip(),
            "nominal_step_minutes": float(meta["accutime"]) if meta.get("accutime") else None,
        },
    )
