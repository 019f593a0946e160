"""Honest exits (issue: numbers a user can trust, items 6-8): a command that does no work because of
its arguments exits non-zero and says what the archive holds; a mistyped path or product is one
line, not a traceback. Real ``nowcast`` processes on real FMI radar."""

from __future__ import annotations

from pathlib import Path

from conftest import nowcast_cli

OUTSIDE = ("--start", "2020-01-01T00:00:00Z", "--end", "2020-01-02T00:00:00Z")
HOLDS = "fmi: 24 frames 2016-09-28T14:45:00Z .. 2016-09-28T16:40:00Z every 5 min"


def test_evaluate_outside_the_archive_exits_non_zero_with_its_range(fmi_archive: str, tmp_path: Path) -> None:
    result = nowcast_cli("evaluate", "--model", "persistence", "--store", fmi_archive, "--product", "fmi",
                         "--out", str(tmp_path / "r.json"), "--lead-steps", "2", *OUTSIDE)
    assert result.returncode == 2, result.stderr
    assert "nothing verified" in result.stderr and HOLDS in " ".join(result.stderr.split())


def test_backfill_outside_the_archive_gives_its_range(fmi_archive: str, tmp_path: Path) -> None:
    result = nowcast_cli("backfill", "--model", "persistence", "--store", fmi_archive, "--product", "fmi",
                         "--out", str(tmp_path / "f.zarr"), "--lead-steps", "2", *OUTSIDE)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fmi holds 24 frames 2016-09-28T14:45:00Z .. 2016-09-28T16:40:00Z" in " ".join(result.stderr.split())


def test_verify_with_nothing_kept_exits_non_zero_with_what_the_archive_holds(tmp_path: Path) -> None:
    from conftest import sample_files

    from pipelines.ingest import ingest

    store = str(tmp_path / "fmi.zarr")  # its own store: no forecast was ever kept in it
    ingest(sample_files("fmi", 3), store, "fmi", fmt="fmi_pgm", workers=1)
    result = nowcast_cli("verify", "--store", store, "--product", "fmi")
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "nothing to verify" in text
    assert f"{store} holds fmi: 3 frames 2016-09-28T14:45:00Z .. 2016-09-28T14:55:00Z every 5 min" in text


def test_an_unknown_product_lists_the_products_there_are(fmi_archive: str, tmp_path: Path) -> None:
    result = nowcast_cli("evaluate", "--model", "persistence", "--store", fmi_archive, "--product", "fmi_typo",
                         "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2 and "no product 'fmi_typo'" in result.stderr
    assert HOLDS in " ".join(result.stderr.split())


def test_ingest_of_an_empty_folder_or_a_missing_path_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    store = str(tmp_path / "a.zarr")
    empty = nowcast_cli("ingest", "--store", store, "--product", "fmi", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "no files under" in empty.stderr and "Traceback" not in empty.stderr
    missing = nowcast_cli("ingest", "--store", store, "--product", "fmi", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) <= 2


def train_on(tmp_path: Path, n_frames: int, step_minutes: int, *extra: str) -> tuple[int, str]:
    """``nowcast train`` (the small synthetic config) on a product of ``n_frames`` at ``step_minutes``."""
    import subprocess

    from conftest import synthetic_training_config, train_command

    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    overrides = synthetic_training_config(tmp_path)
    store = str(tmp_path / "short.zarr")
    ProductArchive(store, "short").write(synthetic_frames(n_frames=n_frames, shape=(64, 64),
                                                          step_minutes=step_minutes))
    result = subprocess.run(train_command(overrides, extra=("--data.store", store, "--data.products", "[short]",
                                                            *extra)),
                            capture_output=True, text=True, cwd=tmp_path)
    return result.returncode, result.stderr


def test_a_product_too_short_to_train_on_says_how_many_frames_it_has(tmp_path: Path) -> None:
    code, stderr = train_on(tmp_path, 5, 5)
    text = " ".join(stderr.split())
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "short holds 5 frames every 5 min" in text and "a window needs 7 (4 in + 3 out)" in text
    assert "cannot help" in text  # not the old advice to raise block_hours


def test_debug_shows_the_traceback_behind_the_paragraph(tmp_path: Path) -> None:
    code, stderr = train_on(tmp_path, 5, 5, "--debug")
    assert code not in (0, 2) and "Traceback" in stderr, stderr[-2000:]
    assert "short holds 5 frames every 5 min" in " ".join(stderr.split())  # the same message, at its end


def test_one_hour_blocks_on_a_ten_minute_product_get_advice_from_the_product(tmp_path: Path) -> None:
    code, stderr = train_on(tmp_path, 36, 10)
    text = " ".join(stderr.split())
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "spans 1.17 h, longer than one 1-hour block" in text and "data.block_hours to at least 2" in text


def test_a_truncated_hdf5_is_called_truncated_and_each_rejected_path_is_named_once(tmp_path: Path) -> None:
    from conftest import DATA

    opera = sorted((DATA / "radar" / "OPERA" / "20180824").iterdir())[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.h5").write_bytes(opera.read_bytes()[:3000])
    result = nowcast_cli("ingest", "--store", str(tmp_path / "a.zarr"), "--product", "opera", str(tmp_path / "in"))
    text = " ".join(result.stderr.split())
    assert result.returncode == 1 and "truncated" in text and "not recognised" not in text, result.stderr
    assert text.count("cut.h5") == 1


def test_the_provider_of_an_odim_composite_is_not_its_last_radar() -> None:
    from pipelines.importers.odim_hdf5 import originating_centre

    assert originating_centre("NOD:bejab,NOD:bewid,NOD:frave") == "ODIM composite of 3 radars (bejab, bewid, frave)"
    assert originating_centre("ORG:247,NOD:bejab,NOD:frave") == "EUMETNET OPERA"
    assert originating_centre("NOD:fivan") == "ODIM node fivan"


def test_a_grid_over_the_pixel_limit_suggests_a_bbox() -> None:
    import numpy as np
    import pytest

    from service.errors import ApiError
    from service.inputs import check_frames
    from service.settings import ServiceSettings

    with pytest.raises(ApiError) as caught:
        check_frames(np.zeros((2, 1100, 1000), np.float32), None, ServiceSettings(models=["persistence"]))
    assert "bbox" in caught.value.message and "max_grid_pixels" in caught.value.message
