"""The model store: trained versions with their checkpoint, data range and scores, and a production pointer.

    <model store>/
      versions/<version>/model.ckpt   the checkpoint (a copy, so runs/ can be cleaned)
      versions/<version>/meta.json    model, created, training data, verification scores
      production                      the production version's name (replaced atomically)
      train.lock                      held by a running ``nowcast train``

Storing versions needs no scoring: deciding which version is production is
``nowcast.promotion``'s job. (The command line calls the folder ``--registry``.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pipelines.locking import EXIT_BUSY

#: the exit code of a ``nowcast train`` that found another run holding the lock
LOCKED = EXIT_BUSY


class StoreLocked(RuntimeError):
    """Another process holds the lock."""


class ModelStore:
    """Versions of trained models on disk and the pointer to the production one."""


    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"

    def production(self) -> str | None:
        pointer = self.root / "production"
        return pointer.read_text().strip() if pointer.is_file() else None

    def checkpoint(self, version: str) -> Path:
        path = self.versions / version / "model.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"model store {self.root} has no version {version!r}")
        return path

    def production_checkpoint(self) -> Path | None:
        version = self.production()
        return self.checkpoint(version) if version else None

    def meta(self, version: str) -> dict[str, Any]:
        return json.loads((self.versions / version / "meta.json").read_text())

    def list(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if (p / "meta.json").is_file())

    def register(self, checkpoint: str | Path) -> str:
        """Copy a checkpoint in as a new version; returns its name."""
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        info = state.get("nowcast")
        if info is None:
            raise ValueError(f"{checkpoint} is not a nowcast checkpoint")
        created = datetime.now(timezone.utc)
        version = f"{created:%Y%m%dT%H%M%S%f}-{info['model']}"
        target = self.versions / version
        target.mkdir(parents=True)
        _atomic_copy(Path(checkpoint), target / "model.ckpt")
        self.write_meta(version, {"version": version, "model": info["model"], "created": created.isoformat(),
                                  "source": str(checkpoint), "training_data": info.get("data"),
                                  "config": {"model": state.get("hyper_parameters"),
                                             "data": state.get("datamodule_hyper_parameters")},
                                  "scores": None})
        return version

    def write_meta(self, version: str, meta: dict[str, Any]) -> None:
        _atomic_write(self.versions / version / "meta.json", json.dumps(meta, indent=2, default=str).encode())

    def set_production(self, version: str) -> None:
        self.checkpoint(version)  # must exist
        _atomic_write(self.root / "production", f"{version}\n".encode())

    @contextmanager
    def lock(self, name: str = "train.lock") -> Iterator[None]:
        """An exclusive, non-blocking lock (released by the OS if the holder dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StoreLocked(f"another run holds {self.root / name}") from exc
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        f.write(data)
        temporary = f.name
    os.replace(temporary, path)


def _atomic_copy(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
