"""``nowcast evaluate --forecasts``: a backfilled forecast store scored against the archive, on real radar."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import nowcast_cli, sample_files
from typer.testing import CliRunner

from nowcast.backfill import backfill
from nowcast.cli import app
from nowcast.score_forecasts import evaluate_forecasts
from pipelines.ingest import ingest
from pipelines.query import centre_crop
from pipelines.store import ProductArchive, open_zarr_store
from pipelines.synthetic import synthetic_frames

CROP = "192"


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """12 real FMI frames (14:45 .. 15:40 UTC) and persistence backfilled for every one, 3 leads:
    the last three init times (15:30 .. 15:40) still wait for their observations."""
    tmp = tmp_path_factory.mktemp("score")
    store, out = str(tmp / "archive.zarr"), str(tmp / "persistence.zarr")
    ingest(sample_files("fmi", 12), store, "fmi", fmt="fmi_pgm", workers=2)
    backfill("persistence", store, "fmi", "2016-09-28T14:45:00Z", "2016-09-28T15:40:00Z", out, lead_steps=3,
             workers=1, batch=6)
    return store, out


def assert_close(mine: object, theirs: object, where: str = "scores") -> None:
    """Nested scores equal to float tolerance (None where a score is undefined on both sides)."""
    if isinstance(theirs, dict):
        assert isinstance(mine, dict) and mine.keys() == theirs.keys(), where
        for key in theirs:
            assert_close(mine[key], theirs[key], f"{where}[{key}]")
    elif isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), where
        for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert_close(a, b, f"{where}[{k}]")
    elif isinstance(theirs, float):
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-4), where  # the store holds hundredths of mm/h
    else:
        assert mine == theirs, where


def forecast_pixels_on(store: str, cases: list[str], leads: int, threshold: float) -> list[int]:
    """Per lead, the scored pixels whose persistence forecast (the init-time frame) is ``threshold``."""
    ys, xs = centre_crop((1226, 760), int(CROP))
    counts = [0] * leads
    with ProductArchive(store, "fmi").open() as ds:
        precip = ds["precip"].isel(y=ys, x=xs)
        for case in cases:
            init = np.datetime64(case.rstrip("Z"))
            last = precip.sel(time=init).values
            on = np.isclose(last, threshold, rtol=0, atol=1e-6)
            for k in range(leads):
                observed = precip.sel(time=init + np.timedelta64(5 * (k + 1), "m")).values
                counts[k] += int((on & np.isfinite(observed)).sum())
    return counts


def copy(path: str, to: Path) -> str:
    """A private copy of a module store, for a test that changes it."""
    shutil.copytree(path, to)
    return str(to)


def test_stored_forecasts_score_like_the_model_run(backfilled: tuple[str, str], tmp_path: Path) -> None:
    store, forecasts = backfilled
    window = ["--store", store, "--product", "fmi", "--start", "2016-09-28T14:50:00Z", "--end",
              "2016-09-28T15:40:00Z", "--crop", CROP]
    scored = nowcast_cli("evaluate", *window, "--forecasts", forecasts, "--out", str(tmp_path / "stored.json"))
    assert scored.returncode == 0, scored.stderr[-3000:]
    ran = nowcast_cli("evaluate", *window, "--model", "persistence", "--lead-steps", "3",
                      "--out", str(tmp_path / "ran.json"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    stored, direct = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("stored", "ran"))
    # the model run needs every lead observed, so it plans exactly the cases not awaiting observations
    assert stored["cases"] == direct["cases"] == [f"2016-09-28T{t}:00Z" for t in (
        "14:50", "14:55", "15:00", "15:05", "15:10", "15:15", "15:20", "15:25")]
    assert stored["n_cases_awaiting_observations"] == 3 and "n_cases_awaiting_observations" not in direct
    for key in ("product", "step_minutes", "lead_minutes", "pixel_size_km", "crop", "n_cases", "n_dry_cases_skipped"):
        assert stored[key] == direct[key], key
    assert stored["forecasts"] == {"persistence": {"path": forecasts, "model": "persistence", "init_times_done": 12}}
    assert set(stored["models"]) == set(direct["models"]) == {"persistence"}
    # equal, 1 mm/h included: FMI's rain sits on 1.00 mm/h at many pixels, and both the archive and the
    # forecast store decode those hundredths to exactly 1.0 (pipelines.store.open_rain_dataset)
    assert sum(forecast_pixels_on(store, stored["cases"], 3, 1.0)) > 0
    for mine, theirs in zip(stored["models"]["persistence"]["scores"], direct["models"]["persistence"]["scores"],
                            strict=True):
        assert_close(mine, theirs)
    assert Path(stored["files"]["case_gif"]).is_file() and "| persistence |" in Path(
        stored["files"]["markdown"]).read_text()


def test_init_times_not_done_are_not_scored(backfilled: tuple[str, str], tmp_path: Path) -> None:
    """Two stores of one model (labelled by store name): only init times done in both are cases."""
    store, forecasts = backfilled
    partial = copy(forecasts, tmp_path / "partial.zarr")
    done = zarr.open_array(open_zarr_store(partial), path="done", mode="r+", zarr_format=3)
    done[2:4] = 0  # 14:55 and 15:00: laid out (their frames even written) but not flagged done
    report = evaluate_forecasts(store, [forecasts, partial], tmp_path / "r.json", end="2016-09-28T15:10:00Z",
                                crop=int(CROP))
    assert report["cases"] == [f"2016-09-28T{t}:00Z" for t in ("14:45", "14:50", "15:05", "15:10")]
    assert {label: entry["init_times_done"] for label, entry in report["forecasts"].items()} == {
        "persistence (persistence.zarr)": 12, "persistence (partial.zarr)": 10}
    scores = [report["models"][label]["scores"] for label in report["forecasts"]]
    assert scores[0] == scores[1]  # the same forecasts, read from two stores


def test_cases_awaiting_observations_are_scored_once_ingested(backfilled: tuple[str, str], tmp_path: Path) -> None:
    store, forecasts = backfilled
    live = copy(store, tmp_path / "live.zarr")
    before = evaluate_forecasts(live, [forecasts], tmp_path / "before.json", start="2016-09-28T15:20:00Z",
                                crop=int(CROP))
    assert before["n_cases"] == 2 and before["n_cases_awaiting_observations"] == 3
    ingest(sample_files("fmi", 14)[12:], live, "fmi", fmt="fmi_pgm", workers=1)  # 15:45 and 15:50 arrive
    after = evaluate_forecasts(live, [forecasts], tmp_path / "after.json", start="2016-09-28T15:20:00Z",
                               crop=int(CROP))
    assert after["cases"][-2:] == ["2016-09-28T15:30:00Z", "2016-09-28T15:35:00Z"]
    assert after["n_cases"] == 4 and after["n_cases_awaiting_observations"] == 1  # 15:40 waits for 15:55


def test_forecasts_from_another_product_or_grid_are_refused(backfilled: tuple[str, str], tmp_path: Path) -> None:
    store, forecasts = backfilled
    other = copy(store, tmp_path / "two_products.zarr")
    ProductArchive(other, "synth").write(synthetic_frames(n_frames=6, shape=(32, 32)))
    synth = str(tmp_path / "synth_forecasts.zarr")
    backfill("persistence", other, "synth", "2021-07-01T12:00Z", "2021-07-01T12:25Z", synth, lead_steps=2, workers=1)
    result = nowcast_cli("evaluate", "--store", other, "--product", "fmi", "--forecasts", synth,
                         "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2 and "holds forecasts of product 'synth', not 'fmi'" in " ".join(result.stderr.split())

    for name, step, message in (("small", 5, r"is on a 32x32 grid; 'fmi' in .* is on 1226x760"),
                                ("slow", 10, r"was made at 10-minute steps; 'fmi' in .* has frames 5 minutes apart")):
        lookalike = str(tmp_path / f"{name}.zarr")  # another store's 'fmi' product
        ProductArchive(lookalike, "fmi").write(synthetic_frames(n_frames=4, shape=(32, 32), step_minutes=step))
        made = str(tmp_path / f"{name}_forecasts.zarr")
        backfill("persistence", lookalike, "fmi", "2021-07-01T12:00Z", "2021-07-01T12:30Z", made, lead_steps=2,
                 workers=1)
        with pytest.raises(ValueError, match=message):
            evaluate_forecasts(store, [forecasts, made], tmp_path / "r.json")

    common = ["evaluate", "--store", store, "--product", "fmi", "--out", str(tmp_path / "r.json")]
    neither = CliRunner().invoke(app, common)
    both = CliRunner().invoke(app, [*common, "--model", "persistence", "--forecasts", forecasts])
    assert neither.exit_code == both.exit_code == 2
    assert "give --model (models to run) or --forecasts" in " ".join(neither.output.split())
    assert "not both" in both.output and not (tmp_path / "r.json").exists()
