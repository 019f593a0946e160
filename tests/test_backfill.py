"""``nowcast backfill``: forecasts for a range of init times, resumable, local or on Dask."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import nowcast_cli, nowcast_in_process

from nowcast.backfill import backfill, open_forecasts
from nowcast.forecaster import load_forecaster
from pipelines.store import ProductArchive


def flat(text: str) -> str:
    """Console output without rich's line wrapping."""
    return " ".join(text.split())


def test_backfill_writes_cf_forecasts_and_a_rerun_skips_them(fmi_crop_archive: str, tmp_path: Path) -> None:
    # the real event on a 320 x 320 window (``fmi_crop_archive``): optical flow of the full grid is slow
    out = str(tmp_path / "forecasts.zarr")
    args = ["backfill", "--model", "optical_flow", "--store", fmi_crop_archive, "--product", "fmi", "--start",
            "2016-09-28T15:00:00Z", "--end", "2016-09-28T15:40:00Z", "--every", "2", "--lead-steps", "3",
            "--out", out, "--workers", "2", "--batch", "2"]
    first = nowcast_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "5 init times" in flat(first.stderr) and "5 written" in flat(first.stderr)
    assert re.search(r"verified: \d+ scored, \d+ dry, 0 awaiting observations", flat(first.stderr)), first.stderr
    with open_forecasts(out) as ds:
        assert ds["precip"].dims == ("init_time", "lead_time", "y", "x") and ds["precip"].attrs["units"] == "mm/h"
        assert ds.attrs["model"] == "optical_flow" and "crs_wkt" in ds["crs"].attrs
        assert [str(t)[:16] for t in ds["init_time"].values] == [
            "2016-09-28T15:00", "2016-09-28T15:10", "2016-09-28T15:20", "2016-09-28T15:30", "2016-09-28T15:40"]
        assert ds["lead_time"].values.astype("timedelta64[m]").astype(int).tolist() == [5, 10, 15]
        assert ds["done"].values.tolist() == [1] * 5
        stored = ds["precip"].isel(init_time=2).values
    # the same forecast made directly, from the archive's three frames up to 15:20
    history = ProductArchive(fmi_crop_archive, "fmi").open()["precip"].sel(
        time=slice("2016-09-28T15:10", "2016-09-28T15:20")).values
    direct = load_forecaster("optical_flow").predict(history, 3)
    direct = np.where(np.isnan(history[-1]), np.nan, direct)
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(direct))
    np.testing.assert_allclose(stored[~np.isnan(stored)], direct[~np.isnan(direct)], atol=0.0051)
    again = nowcast_in_process(*args)
    assert again.returncode == 0 and "0 written, 5 already done" in flat(again.stderr)
    clash = nowcast_in_process(*[a if a != "2016-09-28T15:40:00Z" else "2016-09-28T16:00:00Z" for a in args])
    assert clash.returncode == 2 and "was laid out for 5 init times" in flat(clash.stderr)


def test_killed_backfill_stays_readable_and_a_rerun_completes_it(fmi_crop_archive: str, tmp_path: Path) -> None:
    out = str(tmp_path / "forecasts.zarr")
    exe = str(Path(sys.executable).with_name("nowcast"))
    # the real event on a 320 x 320 window (optical flow of the full grid is slow), 12 init times: an
    # init takes a fraction of a second there, so many are left to do when the kill lands after two
    cmd = [exe, "backfill", "--model", "optical_flow", "--store", fmi_crop_archive, "--product", "fmi", "--start",
           "2016-09-28T15:00:00Z", "--end", "2016-09-28T15:55:00Z", "--lead-steps", "2", "--out", out,
           "--workers", "1", "--batch", "1", "--no-verify"]  # the kill, not verification, is tested here
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, "backfill finished before it could be killed"
            assert time.monotonic() < deadline
            try:
                with open_forecasts(out) as ds:
                    if int(ds["done"].sum()) >= 2:
                        break
            except Exception:
                pass
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with open_forecasts(out) as ds:
        done = ds["done"].values.astype(bool)
        assert 2 <= done.sum() < len(done)
        # every init flagged done has its frames; the rest read as nodata
        assert all(np.isfinite(ds["precip"].isel(init_time=i, lead_time=0).values).any() for i in np.nonzero(done)[0])
    rerun = nowcast_in_process(*cmd[1:])  # the same command, not killed: in this process
    assert rerun.returncode == 0, rerun.stderr
    assert f"{int(done.sum())} already done" in flat(rerun.stderr)
    with open_forecasts(out) as ds:
        assert ds["done"].values.all()


def test_backfill_through_a_dask_cluster(fmi_archive: str, tmp_path: Path) -> None:
    from distributed import LocalCluster

    out = str(tmp_path / "forecasts.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = backfill("persistence", fmi_archive, "fmi", "2016-09-28T15:00:00Z", "2016-09-28T15:55:00Z", out,
                           lead_steps=2, scheduler=cluster.scheduler_address, batch=3, verify=False)
    assert summary["written"] == 12
    with open_forecasts(out) as ds:
        assert ds["done"].values.all()
        # persistence: every lead equals the frame at init time
        init = ds["init_time"].values[5]
        observed = ProductArchive(fmi_archive, "fmi").open()["precip"].sel(time=init).values
        np.testing.assert_allclose(ds["precip"].isel(init_time=5, lead_time=1).values, observed, atol=1e-6)


def test_backfill_uses_the_registry_production_model(
    fmi_crop_archive: str, small_checkpoint: Path, tmp_path: Path,
) -> None:
    from nowcast.model_store import ModelStore

    # the real event on a 320 x 320 window (``fmi_crop_archive``): the network on the full grid is slow
    registry = ModelStore(tmp_path / "registry")
    version = registry.register(small_checkpoint)
    registry.set_production(version)
    out = str(tmp_path / "forecasts.zarr")
    result = nowcast_cli("backfill", "--model", "production", "--registry", str(registry.root), "--store",
                         fmi_crop_archive, "--product", "fmi", "--start", "2016-09-28T15:30:00Z", "--end",
                         "2016-09-28T15:40:00Z", "--out", out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    with open_forecasts(out) as ds:
        assert ds.attrs["model"] == "convlstm" and ds.sizes["lead_time"] == 3 and ds["done"].values.all()
    missing = nowcast_in_process("backfill", "--model", "production", "--store", fmi_crop_archive, "--product", "fmi",
                                 "--start", "2016-09-28T15:30:00Z", "--end", "2016-09-28T15:40:00Z", "--out", out,
                                 env={"NOWCAST_REGISTRY": None})
    assert missing.returncode == 2 and "needs --registry" in flat(missing.stderr)
