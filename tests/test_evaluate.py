"""``nowcast evaluate`` as external checks call it, on real radar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import nowcast_cli, nowcast_in_process, sample_files
from PIL import Image

from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames


def test_evaluate_contract_on_real_radar(fmi_archive: str, small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = nowcast_cli(
        "evaluate", "--store", fmi_archive, "--product", "fmi", "--model", "persistence", "--model", "optical_flow",
        "--model", str(small_checkpoint), "--start", "2016-09-28T15:00:00Z", "--end", "2016-09-28T16:00:00Z",
        "--crop", "256", "--stride", "2", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # history 4 (the checkpoint), 3 leads; inits 15:00..16:00 have all 7 frames among 14:45..16:40
    assert report["lead_minutes"] == [5.0, 10.0, 15.0]
    assert report["cases"] == [f"2016-09-28T{t}:00Z" for t in ("15:00", "15:10", "15:20", "15:30", "15:40", "15:50",
                                                              "16:00")]
    assert report["n_cases"] == 7 and report["crop"] == 256 and report["stride"] == 2
    models = report["models"]
    assert set(models) == {"persistence", "optical_flow", "convlstm (last.ckpt)"}
    for model in models.values():
        leads = model["scores"]
        assert [lead["lead_minutes"] for lead in leads] == [5.0, 10.0, 15.0]
        for lead in leads:
            assert set(lead["csi"]) == {"0.5", "1.0", "2.0", "5.0", "10.0", "30.0"}
            hits, misses, false_alarms = (lead[k]["1.0"] for k in ("hits", "misses", "false_alarms"))
            assert lead["csi"]["1.0"] == pytest.approx(hits / (hits + misses + false_alarms))
            assert lead["pod"]["1.0"] == pytest.approx(hits / (hits + misses))
            assert lead["mae_mm_h"] >= 0 and 0 <= lead["fss_1mm_10km"] <= 1 and lead["n_cases"] == 7
    # skill sanity on real data: extrapolation beats persistence at the first lead
    assert models["optical_flow"]["scores"][0]["csi"]["1.0"] > models["persistence"]["scores"][0]["csi"]["1.0"]
    files = report["files"]
    table = Path(files["markdown"]).read_text()
    assert table.count("| persistence |") == 3 and "CSI" in table
    assert Image.open(files["csi_png"]).format == "PNG"
    with Image.open(files["case_gif"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3


def test_dry_cases_are_skipped(tmp_path: Path) -> None:
    store = str(tmp_path / "s.zarr")
    frames = synthetic_frames(n_frames=20, shape=(48, 48))
    for frame in frames[:10]:
        frame.rain_rate[:] = 0.0
    ProductArchive(store, "synth").write(frames)
    out = tmp_path / "r.json"
    result = nowcast_cli("evaluate", "--store", store, "--product", "synth", "--model", "persistence",
                         "--lead-steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["n_dry_cases_skipped"] >= 9 and report["n_cases"] + report["n_dry_cases_skipped"] == 18
    assert all(np.datetime64(c.rstrip("Z")) >= np.datetime64("2021-07-01T12:45") for c in report["cases"])


def test_unknown_model_and_product_are_clear_errors(fmi_archive: str, tmp_path: Path) -> None:
    bad_model = nowcast_cli("evaluate", "--store", fmi_archive, "--product", "fmi", "--model", "unet",
                            "--out", str(tmp_path / "r.json"))
    assert bad_model.returncode == 2 and "is not a model name" in bad_model.stderr
    assert "convlstm_taasrad19" in bad_model.stderr  # the names that would work
    bad_product = nowcast_in_process("evaluate", "--store", fmi_archive, "--product", "opera", "--model", "persistence",
                                     "--out", str(tmp_path / "r.json"))
    assert bad_product.returncode == 2 and "no product 'opera'" in bad_product.stderr


def test_trained_models_are_pysteps_nowcast_methods(small_checkpoint: Path, fmi_archive: str) -> None:
    from importlib.metadata import entry_points

    import pysteps.nowcasts

    from nowcast.pysteps_plugin import register

    declared = {e.name: e for e in entry_points(group="pysteps.plugins.nowcasts")}
    assert {"nowcast_convlstm", "nowcast_predrnn", "nowcast_sa_convlstm", "nowcast_convlstm_flow",
            "nowcast_predrnn_flow", "nowcast_sa_convlstm_flow", "nowcast_convlstm_sprog"} <= set(declared)
    assert "nowcast_convlstm" in register()
    method = pysteps.nowcasts.get_method("nowcast_convlstm")
    assert method is declared["nowcast_convlstm"].load()
    history = ProductArchive(fmi_archive, "fmi").open()["precip"].values[:4, 500:628, 200:328]
    covered = np.isfinite(history[-1])
    forecast = method(history, None, 5, checkpoint=str(small_checkpoint))
    assert forecast.shape == (5, 128, 128) and np.isfinite(forecast[:, covered]).all()
    assert np.isnan(forecast[:, ~covered]).all() and np.nanmin(forecast) >= 0
    with pytest.raises(ValueError, match="holds a 'convlstm' network, not 'predrnn'"):
        pysteps.nowcasts.get_method("nowcast_predrnn")(history, None, 2, checkpoint=str(small_checkpoint))
    shipped = pysteps.nowcasts.get_method("nowcast_convlstm_flow")(history, None, 2)  # the shipped weights
    assert shipped.shape == (2, 128, 128) and np.isfinite(shipped[:, covered]).all()


def test_a_ten_minute_product_is_resampled_along_its_motion_unless_told_linear(small_checkpoint: Path,
                                                                              tmp_path: Path) -> None:
    """Every other real FMI file, a 10-minute product: the 5-minute network gets its history
    interpolated along the motion by default, per pixel with --time-interpolation linear; the report
    says which, and an unknown method is refused by name."""
    from pipelines.ingest import ingest

    store = str(tmp_path / "ten.zarr")
    ingest(sample_files("fmi", 16)[1::2], store, "fmi", fmt="fmi_pgm")
    args = ["evaluate", "--store", store, "--product", "fmi", "--model", str(small_checkpoint), "--crop", "256",
            "--lead-steps", "1"]
    scores = {}
    for method, run in (("motion", nowcast_cli), ("linear", nowcast_in_process)):  # one real process is enough
        out = tmp_path / f"{method}.json"
        result = run(*args, "--time-interpolation", method, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.read_text())
        (model,) = report["models"].values()
        assert report["step_minutes"] == 10 and model["time_interpolation"] == method
        scores[method] = [lead["mae_mm_h"] for lead in model["scores"]]
    assert scores["motion"] != scores["linear"], "the method changed nothing: not applied"
    refused = nowcast_in_process(*args, "--time-interpolation", "cubic", "--out", str(tmp_path / "c.json"))
    assert refused.returncode == 2
    message = " ".join((refused.stdout + refused.stderr).split())
    assert "time interpolation must be one of motion, linear, got 'cubic'" in message


def test_evaluate_and_backfill_refuse_a_step_far_from_the_networks(small_checkpoint: Path, tmp_path: Path) -> None:
    """A 5-minute network is resampled for 2-20 minute products; an hourly product is refused, by name."""
    from nowcast.backfill import backfill
    from nowcast.evaluate import evaluate
    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    store = str(tmp_path / "hourly.zarr")
    ProductArchive(store, "hourly").write(synthetic_frames(n_frames=12, shape=(32, 32), step_minutes=60))
    with pytest.raises(ValueError, match="works at 5-minute steps .* frames are 60 minutes apart"):
        evaluate(store, "hourly", [str(small_checkpoint)], tmp_path / "r.json")
    with pytest.raises(ValueError, match="works at 5-minute steps"):
        backfill(str(small_checkpoint), store, "hourly", "2021-07-01T12:00Z", "2021-07-01T22:00Z",
                 str(tmp_path / "bf.zarr"))
    assert not (tmp_path / "bf.zarr").exists()  # refused before anything is written


def test_probability_matching_is_each_checkpoints_own_unless_told_and_recorded(
        fmi_archive: str, small_checkpoint: Path, tmp_path: Path) -> None:
    """--probability-matching auto keeps each model's own (none for a baseline and for a checkpoint
    trained without a choice), cdf or none overrides it; the report says which ran; a bad name is refused."""
    args = ("evaluate", "--store", fmi_archive, "--product", "fmi", "--model", "optical_flow", "--model",
            str(small_checkpoint), "--start", "2016-09-28T15:30:00Z", "--end", "2016-09-28T15:40:00Z", "--crop", "256")
    reports = {}
    for method, run in (("auto", nowcast_cli), ("cdf", nowcast_in_process)):  # one real process is enough
        out = tmp_path / f"{method}.json"
        result = run(*args, "--probability-matching", method, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        reports[method] = json.loads(out.read_text())["models"]
    assert {m["probability_matching"] for m in reports["auto"].values()} == {"none"}
    assert {m["probability_matching"] for m in reports["cdf"].values()} == {"cdf"}
    flow = [reports[m]["optical_flow"]["scores"][-1]["mae_mm_h"] for m in ("auto", "cdf")]
    assert flow[0] != flow[1]  # the matched forecast is another forecast
    refused = nowcast_in_process(*args, "--probability-matching", "mean", "--out", str(tmp_path / "m.json"))
    assert refused.returncode == 2
    assert "probability matching must be one of none, cdf, cdf_wet, got 'mean'" in " ".join(refused.stderr.split())
