"""A killed ingest never leaves the store unreadable, and a rerun completes it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import kill_9_when, sample_files

from pipelines.ingest import ingest
from pipelines.store import ProductArchive


def committed_frames(store: str, product: str) -> int:
    archive = ProductArchive(store, product)
    return archive.times().size if archive.exists() else 0


def test_kill_9_mid_ingest_then_rerun_completes(store: str, tmp_path: Path) -> None:
    # a folder of 30 of the 92 real files (links): the kill still lands after 10 frames, with 20 to go,
    # and the rerun and the reference ingest no longer go through all 92 twice
    files = sample_files("knmi", 30)
    folder = tmp_path / "knmi"
    folder.mkdir()
    for path in files:
        (folder / path.name).symlink_to(path)
    folder = str(folder)
    exe = str(Path(sys.executable).with_name("nowcast"))
    cmd = [exe, "ingest", "--format", "knmi_hdf5", "--store", store, "--product", "knmi",
           "--batch-size", "2", folder]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_9_when(proc, lambda: committed_frames(store, "knmi") >= 10, "ingest", timeout=120)
    assert proc.returncode == -signal.SIGKILL
    # readable right after the kill, through plain xarray, with a consistent, sorted prefix
    with xr.open_zarr(f"{store}/knmi", consolidated=True) as ds:
        n = ds.sizes["time"]
        assert 10 <= n < len(files)
        assert np.all(np.diff(ds["time"].values) > np.timedelta64(0))
        assert np.isfinite(ds["precip"].isel(time=-1).values).any()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    reference = str(tmp_path / "reference.zarr")
    ingest(files, reference, "knmi", fmt="knmi_hdf5", batch_size=32)
    got, want = ProductArchive(store, "knmi").open().load(), ProductArchive(reference, "knmi").open().load()
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_array_equal(got["precip"].values, want["precip"].values)


class Interrupted(Exception):
    pass


CRASH_POINTS = {
    # where the insert stops -> what the next run's recovery reports
    "journal_half_written": "discarded an incomplete staging journal",
    "journal_complete": "completed an interrupted out-of-order insert",
    "after_append": "completed an interrupted out-of-order insert",
    "after_region_write": "completed an interrupted out-of-order insert",
}


def _crash_after(method):
    def wrapper(self, *args, **kwargs):
        method(self, *args, **kwargs)
        raise Interrupted(method.__name__)
    return wrapper


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_interrupted_out_of_order_insert_is_redone_or_discarded(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_point: str
) -> None:
    files = sample_files("fmi", 8)
    ingest(files[3:6], store, "fmi", fmt="fmi_pgm")
    archive = ProductArchive(store, "fmi")
    if crash_point == "journal_half_written":
        to_zarr = ProductArchive._to_zarr

        def staging_then_crash(self, ds, zstore, **kwargs):
            to_zarr(self, ds, zstore, **kwargs)
            if zstore is self._staging_store:
                raise Interrupted("before the journal's complete flag")
        monkeypatch.setattr(ProductArchive, "_to_zarr", staging_then_crash)
    elif crash_point == "journal_complete":
        def crash(self):
            raise Interrupted("before applying the journal")
        monkeypatch.setattr(ProductArchive, "_apply_staging", crash)
    elif crash_point == "after_append":
        monkeypatch.setattr(ProductArchive, "_append", _crash_after(ProductArchive._append))
    else:
        monkeypatch.setattr(ProductArchive, "_overwrite_region", _crash_after(ProductArchive._overwrite_region))
    with pytest.raises(Interrupted):
        ingest([files[0], files[1], files[6], files[7]], store, "fmi", fmt="fmi_pgm", batch_size=4)
    monkeypatch.undo()
    # readable in between, whatever the point of interruption; untouched (so still sorted)
    # while the crash came before the journal was applied to the product
    with xr.open_zarr(f"{store}/fmi", consolidated=True) as ds:
        assert ds["precip"].isel(time=-1).values.shape == (1226, 760)
        if crash_point.startswith("journal"):
            assert ds.sizes["time"] == 3 and np.all(np.diff(ds["time"].values) > np.timedelta64(0))
    assert archive.recover() == CRASH_POINTS[crash_point]
    assert archive.recover() is None  # nothing left to do
    ingest(files, store, "fmi", fmt="fmi_pgm")
    reference = str(tmp_path / "reference.zarr")
    ingest(files, reference, "fmi", fmt="fmi_pgm")
    got, want = archive.open().load(), ProductArchive(reference, "fmi").open().load()
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_array_equal(got["precip"].values, want["precip"].values)


def test_space_never_written_reads_as_nodata_not_as_dry(store: str) -> None:
    """An append cut off after the resize but before the data must not look like 0 mm/h."""
    import zarr

    from pipelines.synthetic import synthetic_frames

    archive = ProductArchive(store, "synth")
    archive.write(synthetic_frames(n_frames=2, shape=(32, 32)))
    precip = zarr.open_array(archive._zstore, path="precip", mode="r+")
    precip.resize((3, 32, 32))  # what a killed append leaves behind, uncommitted
    assert archive.times().size == 2  # committed view: unchanged
    # a reader that bypasses the commit sees nodata (the CF _FillValue) there, never 0 mm/h
    fill = archive.open()["precip"].encoding["_FillValue"]
    assert (precip[2] == fill).all() and (precip[1] != fill).any()


@pytest.mark.parametrize("late", [False, True], ids=["append", "out_of_order_insert"])
def test_write_cut_off_before_its_commit_keeps_the_last_commit(
    store: str, monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """Everything of a write is on disk except the consolidated metadata: the product must still
    open at its previous commit (and ``recover`` must not mistake it for an uncommitted one)."""
    import zarr

    files = sample_files("fmi", 6)
    ingest(files[2:4], store, "fmi", fmt="fmi_pgm")
    archive = ProductArchive(store, "fmi")
    before = archive.open().load()

    def cut(*args, **kwargs):
        raise Interrupted("killed before the commit")

    monkeypatch.setattr(zarr, "consolidate_metadata", cut)
    with pytest.raises(Interrupted):
        ingest(files[:2] if late else files[4:], store, "fmi", fmt="fmi_pgm")
    monkeypatch.undo()
    assert archive.exists()
    if not late:  # an out-of-order insert stops in its journal, before touching the product
        xr.testing.assert_identical(archive.open().load(), before)
    archive.recover()
    assert archive.exists() and archive.times().size >= 2
    ingest(files, store, "fmi", fmt="fmi_pgm")
    assert archive.times().size == 6
