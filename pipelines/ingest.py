"""Files in, archive out: parallel decoding with bounded memory, batched commits, a summary.

Decoding (the slow, CPU-bound part) runs in a process pool, in file order, with at most
``2 * workers`` files in flight; decoded frames are committed in batches of ``batch_size``.
Memory is therefore bounded by about ``(2 * workers + batch_size)`` frames, whatever the
archive's length. A file that fails to decode, or whose grid is not the product's, is
reported and skipped; every good frame is kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.convert import MAX_RAIN_RATE, to_rain_rate
from pipelines.frame import Frame
from pipelines.grid import Grid
from pipelines.importers import AUTO, get_importer, read_file
from pipelines.processes import worker_pool
from pipelines.store import GridMismatchError, ProductArchive


@dataclass
class IngestReport:
    """What one ingest run did; ``exit_code`` is non-zero when any file was rejected."""

    product: str
    store: str
    files: int = 0
    written: int = 0
    already_present: int = 0
    inserted_out_of_order: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    qc: dict[str, int] = field(default_factory=dict)
    recovered: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict:
        return {
            "product": self.product,
            "store": self.store,
            "files": self.files,
            "written": self.written,
            "already_present": self.already_present,
            "inserted_out_of_order": self.inserted_out_of_order,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "qc": self.qc,
            "recovered": self.recovered,
        }


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus every non-hidden file under given directories, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(set(found))


def decode(path: Path, fmt: str, max_rain_rate: float = MAX_RAIN_RATE) -> Frame:
    """Read one file and convert it to mm/h (runs in worker processes)."""
    return to_rain_rate(read_file(path, fmt), str(path), max_rain_rate=max_rain_rate)


def _wrong_format_hint(path: Path, fmt: str) -> str:
    """When a named importer fails, what the file looks like instead (``--format auto``'s answer)."""
    if fmt == "auto":
        return ""
    from pipelines.importers import detect_format

    try:
        detected = detect_format(path)
    except Exception:
        return f" (the file does not look like {fmt}, and --format auto recognises no format in it)"
    if detected != fmt:
        return f" (the file does not look like {fmt}: --format auto detects it as {detected})"
    return ""


def _safe_decode(path: Path, fmt: str, max_rain_rate: float) -> Frame | tuple[str, str]:
    try:
        return decode(path, fmt, max_rain_rate)
    except Exception as exc:  # report the file, keep going
        return (str(path), f"{type(exc).__name__}: {exc}{_wrong_format_hint(path, fmt)}")


def _decoded(
    files: list[Path], fmt: str, workers: int, max_rain_rate: float
) -> Iterator[Frame | tuple[str, str]]:
    """Decoded frames (or errors) in file order, with a bounded number in flight."""
    if workers <= 1:
        for path in files:
            yield _safe_decode(path, fmt, max_rain_rate)
        return
    with worker_pool(workers) as pool:
        pending: deque[Future] = deque()
        queue = iter(files)
        for path in queue:
            pending.append(pool.submit(_safe_decode, path, fmt, max_rain_rate))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            next_path = next(queue, None)
            if next_path is not None:
                pending.append(pool.submit(_safe_decode, next_path, fmt, max_rain_rate))
            yield result


def ingest(
    paths: Iterable[str | Path],
    store: str,
    product: str,
    fmt: str = AUTO,
    workers: int = 1,
    batch_size: int = 16,
    max_rain_rate: float = MAX_RAIN_RATE,
    storage_options: dict | None = None,
    on_file: Callable[[Path], None] | None = None,
    files: list[Path] | None = None,
    lock_timeout: float = 60.0,
) -> IngestReport:
    """Ingest files into ``store``/``product``; see the module docstring for the guarantees.

    Holds the product's writer lock for the whole run (``pipelines.locking``): a second writer
    waits up to ``lock_timeout`` seconds, then gets ``WriterBusy``."""
    if fmt != AUTO:
        get_importer(fmt)  # unknown format: fail before touching anything
    archive = ProductArchive(store, product, storage_options, lock_timeout=lock_timeout)
    with archive.writer_lock():
        return _ingest_locked(archive, paths, fmt, workers, batch_size, max_rain_rate, on_file, files)


def _ingest_locked(
    archive: ProductArchive, paths: Iterable[str | Path], fmt: str, workers: int, batch_size: int,
    max_rain_rate: float, on_file: Callable[[Path], None] | None, files: list[Path] | None,
) -> IngestReport:
    report = IngestReport(product=archive.product, store=archive.store)
    report.recovered = archive.recover()
    files = discover(paths) if files is None else files
    report.files = len(files)
    grid: Grid | None = archive.grid() if archive.exists() else None
    source: str | None = archive.source_product() if grid is not None else None
    batch: list[Frame] = []

    def commit() -> None:
        result = archive.write(batch)
        report.written += result.written
        report.already_present += result.already_present
        report.inserted_out_of_order += result.inserted_out_of_order
        batch.clear()

    for path, result in zip(files, _decoded(files, fmt, workers, max_rain_rate), strict=True):
        if on_file is not None:
            on_file(path)
        if isinstance(result, tuple):
            report.failed.append(result)
            continue
        if grid is None:
            grid = result.grid  # the first good frame defines a new product's grid
        try:
            archive.check_grid(result, grid)
        except GridMismatchError as exc:
            report.failed.append((str(path), str(exc)))
            continue
        frame_source = result.attrs.get("source_product")
        if source is None:
            source = frame_source  # the first good frame names the product's source too
        elif frame_source != source:  # e.g. OPERA rain rate and 1-h accumulation in one folder
            report.failed.append((str(path), f"source product {frame_source!r} is not product "
                                  f"'{archive.product}''s {source!r}: ingest it into a product of its own "
                                  "(another --product)"))
            continue
        for key, value in result.qc.items():
            report.qc[key] = report.qc.get(key, 0) + value
        batch.append(result)
        if len(batch) >= batch_size:
            commit()
    if batch:
        commit()
    return report
