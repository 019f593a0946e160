"""Checkpoints written atomically, so a job killed mid-save still resumes from ``last.ckpt``;
and what killed saves left behind is removed when the next run starts (``CheckpointJanitor``)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from pipelines.locking import process_alive

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the target, then rename over it (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object stores: a PUT is already all-or-nothing
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, temporary)
        os.replace(temporary, target)


#: a save's temporary file: ``.<target name>.<pid>.tmp`` (AtomicCheckpointIO)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _alive(pid: int) -> bool:
    return process_alive(pid)  # this very process too: a save of its own, never a killed one's leftover
    return True


def clean_checkpoint_dir(dirpath: str | Path, referenced: set[Path] | None = None,
                         keep: set[Path] | None = None) -> list[Path]:
    """Remove what killed saves left in ``dirpath``: partial temporary files (their writer is
    gone) and, given ``referenced`` (what the resumed run's checkpoint callbacks track), every
    other ``.ckpt``: copies saved after the checkpoint resumed from, which the resumed top-k no
    longer knows and would otherwise keep forever (as ``-v1``, ``-v2`` ... duplicates)."""
    root = Path(dirpath)
    if not root.is_dir():
        return []
    removed = []
    keep = {p.resolve() for p in (keep or set())}
    for path in root.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
        elif referenced is not None and path.suffix == ".ckpt" and path.is_file():
            resolved = path.resolve()
            if resolved not in referenced and resolved not in keep:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class CheckpointJanitor(Callback):
    """At the start of training (after a resume has restored the checkpoint callbacks' state),
    clean each checkpoint directory (``clean_checkpoint_dir``): a run killed during saves leaves
    neither partial files nor untracked copies behind, so ``save_top_k`` bounds the disk used."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        resumed = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path and "://" not in str(trainer.ckpt_path) \
            else None
        for dirpath in {str(cb.dirpath) for cb in callbacks if "://" not in str(cb.dirpath)}:
            owners = [cb for cb in callbacks if str(cb.dirpath) == dirpath]
            referenced = None
            if resumed is not None and resumed.parent == Path(dirpath).resolve():
                referenced = {Path(p).resolve() for cb in owners
                              for p in [*cb.best_k_models, cb.best_model_path, cb.last_model_path,
                                        cb.kth_best_model_path] if p}
            removed = clean_checkpoint_dir(dirpath, referenced, keep={resumed} if resumed else None)
            if removed:
                log.info("removed %d leftover checkpoint file(s) from %s: %s", len(removed), dirpath,
                         ", ".join(p.name for p in removed))
