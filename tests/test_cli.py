"""The command line as users and external checks call it, and the demo's data sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, nowcast_cli, sample_files

from pipelines.sample_data import sample_event_files
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames


def test_ingest_contract_command_line(store: str) -> None:
    folder = sample_files("mch", 1)[0].parent
    result = nowcast_cli("ingest", "--format", "mch_gif", "--store", store, "--product", "mch",
                         "--workers", "2", str(folder))
    assert result.returncode == 0, result.stderr
    assert "40 frames written" in result.stderr.replace("\n", " ")
    assert ProductArchive(store, "mch").times().size == 40


@pytest.mark.slow
def test_demo_ingests_real_radar_and_prints_the_summary(tmp_path: Path) -> None:
    env = {**os.environ, "NOWCAST_SAMPLE_DATA": str(DATA)}
    store = str(tmp_path / "demo.zarr")
    result = nowcast_cli("demo", "--store", store, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FMI radar composite, 40 files" in result.stderr
    assert "2016-09-28T14:45:00Z .. 2016-09-28T18:00:00Z" in result.stdout
    # ... and the main job ends in a forecast: baselines verified, with a GIF to look at
    assert "| optical_flow | 30 |" in result.stdout
    assert "| convlstm_sprog | 30 |" in result.stdout  # the best shipped network, beside the baselines
    assert (tmp_path / "data" / "demo_report_case.gif").is_file()
    info = json.loads(nowcast_cli("store", "info", "--store", store, "--json", check=True).stdout)
    assert info["products"][0]["frames"] == 40


def test_demo_falls_back_to_the_synthetic_storm_and_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {**os.environ, "NOWCAST_SAMPLE_DATA": str(empty), "NOWCAST_NO_DOWNLOAD": "1"}
    store = str(tmp_path / "demo.zarr")
    result = nowcast_cli("demo", "--store", store, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no sample radar found" in result.stderr and "synthetic" in result.stderr
    assert ProductArchive(store, "synthetic").times().size == 36
    assert "| persistence | 5 |" in result.stdout


def test_benchmarks_find_the_sample_events_where_the_tests_do_and_name_what_is_missing(tmp_path: Path) -> None:

    files = sample_event_files("mch", 3, DATA)
    assert files == sample_files("mch", 3) and files[0].name < files[1].name < files[2].name
    with pytest.raises(FileNotFoundError, match=r"no \*\.gif in .*no-data/radar/mch/20160711"):
        sample_event_files("mch", data_dir=tmp_path / "no-data")
    with pytest.raises(KeyError, match="no sample event 'dwd': choose from fmi, mch"):
        sample_event_files("dwd")


def test_synthetic_storm_moves_grows_and_decays() -> None:
    frames = synthetic_frames(n_frames=36, shape=(96, 96), seed=4)
    again = synthetic_frames(n_frames=36, shape=(96, 96), seed=4)
    assert all(np.array_equal(a.rain_rate, b.rain_rate) for a, b in zip(frames, again, strict=True))
    totals = np.array([f.rain_rate.sum() for f in frames])
    assert totals.max() > 2 * totals[totals > 0].min()  # cells are born, peak and die
    assert all(f.rain_rate.min() >= 0 and np.isfinite(f.rain_rate).all() for f in frames)
    # the field moves: frames 4 steps apart correlate best at a shift, not in place
    a, b = frames[10].rain_rate, frames[14].rain_rate
    correlation = np.real(np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a))))
    dy, dx = np.unravel_index(np.argmax(correlation), correlation.shape)
    assert (dy, dx) != (0, 0)
    assert np.diff([f.time for f in frames]).astype(int).tolist() == [300] * 35


def test_store_show_draws_a_frame_and_refuses_unknown_times(store: str, tmp_path: Path) -> None:
    from PIL import Image

    from pipelines.ingest import ingest

    ingest(sample_files("fmi", 2), store, "fmi", fmt="fmi_pgm")
    out = tmp_path / "frame.png"
    result = nowcast_cli("store", "show", "--store", store, "--product", "fmi",
                         "--time", "2016-09-28T14:45:00Z", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 400
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
        assert len(colours) > 8  # rain classes, nodata grey, dry white, axes
    missing = nowcast_cli("store", "show", "--store", store, "--product", "fmi", "--time", "2016-09-28T12:00:00Z",
                          "--out", str(tmp_path / "x.png"))
    assert missing.returncode == 2 and "is not a frame of 'fmi'" in missing.stderr


def test_store_info_on_a_missing_store_is_an_error_that_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.zarr"
    result = nowcast_cli("store", "info", "--store", str(missing), env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 2
    assert f"no store at {missing}" in result.stdout + result.stderr


def test_store_info_shows_how_two_products_overlap_in_time_and_space(tmp_path: Path) -> None:
    """Real MeteoSwiss radar against real SAF CRR (geostationary, another day) and FMI (Finland)."""
    from pipelines.info import product_overlap
    from pipelines.ingest import ingest

    store = str(tmp_path / "pair.zarr")
    for product, fmt in (("mch", "mch_gif"), ("saf", "saf_crri"), ("fmi", "fmi_pgm")):
        ingest(sample_files(product, 2), store, product, fmt=fmt)
    with_saf = product_overlap(store, "mch", "saf")
    assert with_saf["space"]["share_of_first"] > 0.99  # Meteosat sees all of Switzerland ...
    assert with_saf["time"]["start"] is None and with_saf["time"]["shared_valid_times"] == 0  # ... on another day
    assert product_overlap(store, "mch", "fmi")["space"] == {"share_of_first": 0.0}
    saf_share = product_overlap(store, "saf", "mch")["space"]["share_of_first"]
    assert 0.0 < saf_share < 0.05  # the radar is a small part of the disk's grid
    itself = product_overlap(store, "mch", "mch")
    assert itself["time"]["shared_valid_times"] == 2 and itself["time"]["hours"] == 5 / 60
    result = nowcast_cli("store", "info", "--store", store, "--product", "mch", "--overlap", "saf", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overlap"]["space"]["share_of_first"] == with_saf["space"]["share_of_first"]
    lonely = nowcast_cli("store", "info", "--store", store, "--overlap", "saf")
    assert lonely.returncode == 2 and "--overlap needs --product" in lonely.stderr
