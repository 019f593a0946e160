"""The model store: trained versions with their checkpoint, data range and scores, and a production pointer.

    <model store>/
      versions/<version>/model.ckpt   the checkpoint (a copy, so runs/ can be cleaned)
      versions/<version>/meta.json    model, created, training data, verification scores
      production                      the production version's name (replaced atomically)
      train.lock                      held by a running ``nowcast train``
      promote.lock                    held while a promotion moves the production pointer

Storing versions needs no scoring: deciding which version is production is
``nowcast.promotion``'s job. (The command line calls the folder ``--registry``.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pipelines.locking import EXIT_BUSY, process_alive

#: the exit code of a ``nowcast train`` that found another run holding the lock
LOCKED = EXIT_BUSY


class StoreLocked(RuntimeError):
    """Another process holds the lock."""


class ProductionChanged(RuntimeError):
    """The production pointer moved since a promotion read it (compare-and-swap lost)."""

    def __init__(self, expected: str | None, found: str | None):
        super().__init__(f"production is {found!r}, not {expected!r} as scored against")
        self.expected, self.found = expected, found


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

    def set_production(self, version: str, expected: str | None | object = ...) -> None:
        """Point production at ``version``; with ``expected``, only if production is still that
        version (compare-and-swap: call it holding ``lock(PROMOTE_LOCK)``, as promotion does)."""
        self.checkpoint(version)  # must exist
        if expected is not ... and self.production() != expected:
            raise ProductionChanged(expected, self.production())  # type: ignore[arg-type]
        _atomic_write(self.root / "production", f"{version}\n".encode())

    def clean_leftovers(self) -> list[str]:
        """Remove temporary files a killed write left behind (pointer, metadata and checkpoint
        copies, all hidden dot-files beside their target); returns what was removed. Call it
        holding the promotion lock: a live writer's temporary file must not vanish under it."""
        removed = []
        candidates = list(self.root.glob(".production.*"))
        if self.versions.is_dir():
            candidates += list(self.versions.glob("*/.meta.json.*")) + list(self.versions.glob("*/.model.ckpt.*"))
        for path in candidates:
            if _writer_alive(path):
                continue
            with _suppress_missing():
                path.unlink()
                removed.append(str(path))
        return removed

    @contextmanager
    def lock(self, name: str = "train.lock", wait: float = 0.0) -> Iterator[None]:
        """An exclusive lock (released by the OS if the holder dies); waits up to ``wait`` seconds
        for another holder, then raises StoreLocked."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a+") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as exc:
                    if time.monotonic() >= deadline:
                        raise StoreLocked(f"another run holds {self.root / name}") from exc
                    time.sleep(0.05)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield


#: the lock every promotion holds while it compares and moves the production pointer
PROMOTE_LOCK = "promote.lock"


@contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass


#: a temporary file without its writer's pid (older releases) counts as left behind after this long
STALE_TEMPORARY_S = 3600.0


def _writer_alive(path: Path) -> bool:
    """True while the process that is writing ``path`` (its pid is in the name) still runs."""
    parts = path.name.split(".")
    pid = next((int(p) for p in parts if p.isdigit()), None)
    if pid is None:
        try:
            return time.time() - path.stat().st_mtime < STALE_TEMPORARY_S
        except FileNotFoundError:
            return False
    return process_alive(pid)  # this process (another thread of it may be writing), or another live one


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.{os.getpid()}.",
                                     suffix=".tmp") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        temporary = f.name
    os.replace(temporary, path)


def _atomic_copy(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
