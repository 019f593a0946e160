"""Importer registry: one module per format, looked up by name (``get_importer``).

Each importer module defines ``sniff(path, head) -> bool`` (does this file look like mine?)
and ``read(path) -> RawFrame`` (decode it, in the provider's unit, with its valid time). An
importer of files that hold many frames (``cf_netcdf``) also defines ``frame_count(path)`` and
``read_frames(path, start, stop) -> list[RawFrame]``, so that a long file is read in slices.
A new format is one new module plus one line in ``IMPORTERS``. ``read_file`` applies the output
checks (``_common.check_raw_frame``) to every importer's frame, so importers need not repeat them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from pipelines.frame import RawFrame
from pipelines.importers._common import InvalidFrameError as InvalidFrameError  # re-exported for callers
from pipelines.importers._common import check_raw_frame

IMPORTERS: dict[str, str] = {
    "fmi_pgm": "pipelines.importers.fmi_pgm",
    "mch_gif": "pipelines.importers.mch_gif",
    "knmi_hdf5": "pipelines.importers.knmi_hdf5",
    "odim_hdf5": "pipelines.importers.odim_hdf5",
    "bom_rf3": "pipelines.importers.bom_rf3",
    "mrms_grib": "pipelines.importers.mrms_grib",
    "saf_crri": "pipelines.importers.saf_crri",
    "cf_netcdf": "pipelines.importers.cf_netcdf",  # last: the specific netCDF formats above win
}
AUTO = "auto"


class UnknownFormatError(ValueError):
    """The file matches none of the registered importers."""


def formats() -> list[str]:
    return [*IMPORTERS, AUTO]


def get_importer(name: str) -> ModuleType:
    """The importer module for ``name``; raises with the list of known formats."""
    if name not in IMPORTERS:
        raise KeyError(f"unknown format {name!r}; known formats: {', '.join(formats())}")
    return importlib.import_module(IMPORTERS[name])


def detect_format(path: str | Path) -> str:
    """Name of the first importer whose ``sniff`` accepts the file."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for name in IMPORTERS:
        try:
            if get_importer(name).sniff(Path(path), head):
                return name
        except Exception:  # a sniffer that chokes on a foreign file just says no
            continue
    if head.startswith(HDF5_SIGNATURE):  # an HDF5 file no sniffer could open: say what is wrong with it
        damage = _hdf5_damage(path)
        if damage:
            raise UnknownFormatError(f"{path}: an HDF5 file that cannot be opened, truncated or corrupt ({damage})")
    raise UnknownFormatError(f"{path}: format not recognised by any importer ({', '.join(IMPORTERS)})")


#: the first bytes of every HDF5 file (KNMI, ODIM, and netCDF-4 files are HDF5)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5_damage(path: str | Path) -> str | None:
    """Why h5py cannot open ``path`` (its first line), or None when it can."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return None
    except Exception as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_file(path: str | Path, fmt: str = AUTO) -> RawFrame:
    """Decode one file with the named importer (or the detected one), then check what it returned.

    ``check_raw_frame`` runs here, once, for every importer: a frame that is not a 2-D image on a
    grid of its shape, with no infinite values and a valid time, raises ``InvalidFrameError``."""
    name = detect_format(path) if fmt == AUTO else fmt
    return check_raw_frame(get_importer(name).read(Path(path)), path)


def is_multi_frame(name: str) -> bool:
    """Whether the importer ``name`` reads files of many frames (``frame_count``/``read_frames``)."""
    return hasattr(get_importer(name), "read_frames")


def frame_count(path: str | Path, name: str) -> int:
    """How many frames the file holds (1 for a single-frame format)."""
    module = get_importer(name)
    return module.frame_count(Path(path)) if hasattr(module, "read_frames") else 1


def read_frames(path: str | Path, name: str, start: int = 0, stop: int | None = None
                ) -> tuple[list[RawFrame], list[str]]:
    """Frames ``start:stop`` of a file, each checked as ``read_file`` checks one: the good frames,
    and a message (naming its index and time) for each frame that fails the checks."""
    module = get_importer(name)
    if not hasattr(module, "read_frames"):
        return [read_file(path, name)], []
    good: list[RawFrame] = []
    problems: list[str] = []
    for index, frame in enumerate(module.read_frames(Path(path), start, stop), start=start):
        try:
            good.append(check_raw_frame(frame, path))
        except InvalidFrameError as exc:
            problems.append(f"frame {index} ({frame.time}Z): {exc}")
    return good, problems
