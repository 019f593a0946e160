"""Shared fixtures: the real sample data in ../shared/data, and small stores built from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SAMPLE_DATA", REPO.parent / "shared" / "data"))

PRODUCTS = {
    # name: (folder, format, files used in tests)
    "fmi": ("radar/fmi/pgm/20160928", "fmi_pgm", "*.pgm.gz"),
    "mch": ("radar/mch/20160711", "mch_gif", "*.gif"),
    "knmi": ("radar/KNMI/2010/08", "knmi_hdf5", "*.h5"),
    "opera": ("radar/OPERA/20180824", "odim_hdf5", "*.hdf"),
    "saf": ("saf/20180601/CRR", "saf_crri", "*.nc"),
}


def sample_files(product: str, count: int | None = None) -> list[Path]:
    """Real files of one sample product; a missing data folder fails the test, loudly."""
    folder, _, pattern = PRODUCTS[product]
    files = sorted((DATA / folder).glob(pattern))
    if not files:
        pytest.fail(f"sample data missing: no {pattern} in {DATA / folder} (see ../shared/data/README.md)")
    return files[:count] if count else files


def nowcast_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``nowcast`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("nowcast")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=check, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "archive.zarr")
