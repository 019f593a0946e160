"""A hybrid's cached baseline is computed for the windows a run reads, not for every init time."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from pipelines.datamodule import RadarDataModule
from pipelines.extrapolation import ExtrapolationCache, build_cache, cache_path, init_indices
from pipelines.store import ProductArchive

LEADS = 2


def done_inits(path: str) -> set[int]:
    return {int(i) for i in np.flatnonzero(zarr.open_group(f"{path}/fmi", mode="r")["done"][:])}


def test_a_cache_limited_to_some_inits_computes_those_and_refuses_the_others(fmi_crop_archive: str, tmp_path) -> None:
    every = init_indices(ProductArchive(fmi_crop_archive, "fmi").times(), LEADS)
    wanted = [int(every[0]), int(every[-1]), 10_000]  # an index past the archive is no init time: ignored
    path = build_cache(fmi_crop_archive, "fmi", LEADS, workers=1, path=str(tmp_path / "c.zarr"), progress=False,
                       inits=wanted)
    assert done_inits(path) == {int(every[0]), int(every[-1])}
    cache = ExtrapolationCache(path, "fmi")
    assert np.isfinite(cache.read(int(every[0]), LEADS, slice(None), slice(None))).any()
    with pytest.raises(KeyError, match="rebuild the cache"):  # never served as rain (or as zeros)
        cache.read(int(every[1]), LEADS, slice(None), slice(None))
    # asking for more later computes only what is missing, and keeps what is there
    build_cache(fmi_crop_archive, "fmi", LEADS, workers=1, path=path, progress=False, inits=every[:2])
    assert done_inits(path) == {int(every[0]), int(every[1]), int(every[-1])}


def test_training_computes_the_baseline_of_its_training_and_validation_windows_only(
    fmi_crop_archive: str, tmp_path,
) -> None:
    store = str(tmp_path / "fmi.zarr")
    shutil.copytree(fmi_crop_archive, store)  # the cache lives beside the archive: a copy of our own
    # blocks of 40 minutes (8 frames): val, train, test over the 2 hours of the event
    data = RadarDataModule(store=store, products=["fmi"], t_in=4, t_out=LEADS, crop=None, batch_size=1,
                           num_workers=0, block_hours=40 / 60, split_pattern=["val", "train", "test"],
                           motion=True, extrapolation="optical_flow")
    data.setup("fit")
    inits = {split: {int(s) + 3 for ds in data.datasets[split].datasets for s in ds.starts}
             for split in ("train", "val", "test")}
    assert inits["train"] and inits["val"] and inits["test"]
    path = cache_path(store, "optical_flow")
    assert done_inits(path) == inits["train"] | inits["val"]  # the test windows' inits are not computed
    assert data.datasets["train"][0]["extrapolation"].shape[0] == LEADS  # what training reads is there
    data.setup("test")  # a test run computes its own
    assert done_inits(path) == inits["train"] | inits["val"] | inits["test"]
