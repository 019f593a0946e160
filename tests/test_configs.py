"""Shipped configs instantiate what they name."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from conftest import REPO, sample_files

from pipelines.ingest import ingest


def instantiate(section: dict, **overrides):
    module, _, name = section["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**section["init_args"], **overrides})


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_build_a_datamodule(path: Path, store: str) -> None:
    section = yaml.safe_load(path.read_text())["data"]
    product = section["init_args"]["products"][0]
    if product == "fmi":
        ingest(sample_files("fmi", 40), store, "fmi", fmt="fmi_pgm", workers=2)
    else:
        from pipelines.store import ProductArchive
        from pipelines.synthetic import synthetic_frames

        ProductArchive(store, product).write(synthetic_frames(n_frames=72))
    dm = instantiate(section, store=store, num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) > 0 and len(dm.datasets["val"]) > 0
    batch = next(iter(dm.train_dataloader()))
    t_in, t_out, crop = (section["init_args"][k] for k in ("t_in", "t_out", "crop"))
    assert batch["inputs"].shape[1:] == (t_in, 1, crop, crop)
    assert batch["targets"].shape[1:] == (t_out, 1, crop, crop)
