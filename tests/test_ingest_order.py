"""Files from several folders are ingested in time order (their names), not in path order."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import sample_files

from pipelines.ingest import discover, ingest
from pipelines.store import ProductArchive


def test_later_frames_in_an_earlier_folder_do_not_make_the_ingest_merge_out_of_order(tmp_path: Path) -> None:
    files = sample_files("fmi", 4)
    early, late = tmp_path / "z_first_hour", tmp_path / "a_second_hour"  # path order: the later files first
    for folder, chunk in ((early, files[:2]), (late, files[2:])):
        folder.mkdir()
        for f in chunk:
            shutil.copy(f, folder / Path(f).name)
    found = discover([late, early])
    assert [p.name for p in found] == [Path(f).name for f in files]  # by name: the radar's time stamps
    store = str(tmp_path / "fmi.zarr")
    report = ingest([str(late), str(early)], store, "fmi", fmt="fmi_pgm", workers=1, batch_size=2)
    assert report.written == 4 and report.inserted_out_of_order == 0
    times = ProductArchive(store, "fmi").times()
    assert (times[1:] > times[:-1]).all()
