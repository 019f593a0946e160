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
        ingest(sample_files("fmi", 40), store, "fmi", fmt="fmi_pgm", workers=1)
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


TRAINING_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml")  # overlays (configs/gpu.yaml) have no model
                          if {"trainer", "model"} <= set(yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_training_configs_keep_a_last_checkpoint_after_every_validation(path: Path) -> None:
    """``--ckpt_path last`` resumes from last.ckpt: it must be the latest epoch, not the best one (a
    monitored ModelCheckpoint's save_last only moves with its best), and in the directory the
    monitored checkpoints go to."""
    callbacks = yaml.safe_load(path.read_text())["trainer"].get("callbacks", [])
    checkpoints = [c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    latest = [c for c in checkpoints if c.get("filename") == "last" and not c.get("monitor")]
    assert latest, f"{path.name}: no ModelCheckpoint with filename 'last' and no monitor"
    assert not any(c.get("save_last") for c in checkpoints), f"{path.name}: save_last would write last-v1.ckpt"
    assert {c["dirpath"] for c in checkpoints} == {latest[0]["dirpath"]}
