"""Progress without a terminal (issue: numbers a user can trust, item 4): with output going to a
file or pipe, long commands print plain lines (done/total, rate, ETA), so a cron or CI log shows
the run is alive. Real ``nowcast`` processes, their output captured (not a TTY)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from conftest import nowcast_cli, sample_files

from pipelines.progress import PlainProgress

EVERY_UPDATE = {**os.environ, "NOWCAST_PROGRESS_SECONDS": "0"}
LINE = re.compile(r"^(?P<what>[\w ]+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\), [\d.e+-]+/s, (ETA|done in) \w+$",
                  re.MULTILINE)


def lines(stderr: str, what: str) -> list[re.Match]:
    return [m for m in LINE.finditer(stderr) if m["what"] == what]


def test_ingest_prints_plain_progress_lines(tmp_path: Path) -> None:
    files = sample_files("fmi", 3)
    result = nowcast_cli("ingest", "--format", "fmi_pgm", "--store", str(tmp_path / "a.zarr"), "--product", "fmi",
                         *map(str, files), env=EVERY_UPDATE)
    assert result.returncode == 0, result.stderr
    found = lines(result.stderr, "ingest fmi")
    assert [m["done"] for m in found][-1] == "3" and found[-1]["total"] == "3", result.stderr
    assert "done in" in found[-1][0]


def test_evaluate_and_backfill_print_plain_progress_lines(fmi_archive: str, tmp_path: Path) -> None:
    window = ("--store", fmi_archive, "--product", "fmi", "--start", "2016-09-28T15:30:00Z",
              "--end", "2016-09-28T15:45:00Z", "--lead-steps", "2")
    evaluated = nowcast_cli("evaluate", "--model", "persistence", "--out", str(tmp_path / "r.json"), "--crop", "128",
                            *window, env=EVERY_UPDATE)
    assert evaluated.returncode == 0, evaluated.stderr
    assert [m["done"] for m in lines(evaluated.stderr, "evaluate")][-1] == "4", evaluated.stderr
    filled = nowcast_cli("backfill", "--model", "persistence", "--out", str(tmp_path / "f.zarr"), "--workers", "1",
                         "--no-verify", *window, env=EVERY_UPDATE)
    assert filled.returncode == 0, filled.stderr
    assert lines(filled.stderr, "backfill fmi")[-1]["done"] == "4", filled.stderr


def test_lines_are_spaced_by_the_interval() -> None:
    out = io.StringIO()
    with PlainProgress(out, interval_s=3600) as progress:
        task = progress.add_task("work", total=100)
        for _ in range(99):
            progress.advance(task)
    printed = out.getvalue().splitlines()
    assert len(printed) == 2 and printed[0].startswith("work: 1/100") and printed[1].startswith("work: 99/100")
    assert "done in" in printed[1]


def test_verify_prints_plain_progress_lines(tmp_path: Path) -> None:
    from nowcast.forecaster import load_forecaster
    from nowcast.live_verification import VerificationLedger
    from pipelines.ingest import ingest
    from pipelines.store import ProductArchive

    store = str(tmp_path / "fmi.zarr")
    ingest(sample_files("fmi", 4), store, "fmi", fmt="fmi_pgm", workers=1)
    archive, ledger = ProductArchive(store, "fmi"), VerificationLedger(store, "fmi")
    times = archive.times()
    for k in (0, 1):  # two forecasts kept, each with its two leads observed
        window = archive.window(length=1, end=times[k])
        assert ledger.register("persistence", times[k], load_forecaster("persistence").predict(window.frames, 2), 5.0)
    result = nowcast_cli("verify", "--store", store, env=EVERY_UPDATE)
    assert result.returncode == 0, result.stderr
    found = re.findall(r"^verify: (\d+), [\d.e+-]+/s$", result.stderr, re.MULTILINE)  # cases scored so far
    assert found == ["1", "2"], result.stderr


def test_the_extrapolation_cache_builder_prints_plain_progress_lines(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from pipelines.extrapolation import build_cache
    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    monkeypatch.setenv("NOWCAST_PROGRESS_SECONDS", "0")
    store = str(tmp_path / "synth.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=8, shape=(48, 48)))
    build_cache(store, "synth", t_out=2, workers=1)
    found = lines(capsys.readouterr().err, "optical_flow of synth")
    assert found and found[-1]["done"] == found[-1]["total"] == "4" and "done in" in found[-1][0], found
