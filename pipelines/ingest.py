"""Files in, archive out: parallel decoding with bounded memory, batched commits, a summary.

Decoding (the slow, CPU-bound part) runs in a process pool, in file order, with at most
``2 * workers`` pieces in flight (a piece is one file, or ``SLICE_FRAMES`` frames of a file that
holds many); decoded frames are committed in batches of ``batch_size``. Memory is therefore
bounded by about ``(2 * workers * SLICE_FRAMES + batch_size)`` frames, whatever the archive's
length. A file that fails to decode, or whose grid is not the product's, is
reported and skipped; every good frame is kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.convert import MAX_RAIN_RATE, to_rain_rate
from pipelines.frame import Frame, RawFrame
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
    """Files given directly, plus every non-hidden file under given directories, sorted by file name
    (then path): radar file names carry their time, so files from several folders arrive in time
    order and append, where a path order (``/data/2016-12.nc`` before ``/mnt/2016-11.nc``) would make
    each later batch an out-of-order merge that rewrites the archive after it."""
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
    return sorted(set(found), key=lambda p: (p.name, str(p)))


@dataclass(frozen=True)
class Piece:
    """What one worker decodes: a whole single-frame file, or frames ``start:stop`` of a long one."""

    path: Path
    fmt: str
    start: int | None = None  # None: the file is one frame
    stop: int | None = None
    last: bool = True  # the file's last piece (progress counts files)

    @property
    def label(self) -> str:
        return str(self.path) if self.start is None else f"{self.path}[{self.start}:{self.stop}]"


@dataclass
class Decoded:
    """A piece's good frames, and (label, error) for what could not be decoded."""

    piece: Piece
    frames: list[Frame] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


#: frames a worker decodes at once from a file of many (bounds memory on long files)
SLICE_FRAMES = 256
_CONTAINER_MAGIC = (b"\x89HDF\r\n\x1a\n", b"CDF")


def _format_of(path: Path, fmt: str) -> str:
    """The importer for ``path``: ``fmt``, or under auto the detected one for netCDF/HDF5 files
    (the containers a many-frame format can use); other files are detected in the workers."""
    if fmt != AUTO:
        return fmt
    from pipelines.importers import detect_format

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        return detect_format(path) if head.startswith(_CONTAINER_MAGIC) else AUTO
    except Exception:  # unreadable or unknown: the worker reports it
        return AUTO


def plan_pieces(files: Iterable[Path], fmt: str, slice_frames: int = SLICE_FRAMES) -> Iterator[Piece]:
    """Split the files into the pieces workers decode, in file and time order."""
    from pipelines.importers import frame_count, is_multi_frame

    for path in files:
        name = _format_of(path, fmt)
        if name == AUTO or not is_multi_frame(name):
            yield Piece(path, name)
            continue
        try:
            count = frame_count(path, name)
        except Exception:  # the worker reads it again and reports why
            yield Piece(path, name, 0, None)
            continue
        starts = range(0, max(count, 1), slice_frames)
        for start in starts:
            stop = min(count, start + slice_frames)
            yield Piece(path, name, start, stop, last=stop >= count)


def decode(path: Path, fmt: str, max_rain_rate: float = MAX_RAIN_RATE,
           zr: tuple[float, float] | None = None) -> Frame:
    """Read one file and convert it to mm/h (runs in worker processes)."""
    return to_rain_rate(_with_zr(read_file(path, fmt), zr), str(path), max_rain_rate=max_rain_rate)


def _with_zr(raw: RawFrame, zr: tuple[float, float] | None) -> RawFrame:
    """The user's Z-R relation replaces the importer's for reflectivity (``--zr A B``)."""
    if zr is not None and raw.unit == "dBZ":
        raw.zr_a, raw.zr_b = float(zr[0]), float(zr[1])
    return raw


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


def _safe_decode(piece: Piece, max_rain_rate: float, zr: tuple[float, float] | None) -> Decoded:
    from pipelines.importers import read_frames

    out = Decoded(piece)
    try:
        if piece.start is None:
            out.frames.append(decode(piece.path, piece.fmt, max_rain_rate, zr))
            return out
        raws, problems = read_frames(piece.path, piece.fmt, piece.start, piece.stop)
        out.errors.extend((str(piece.path), problem) for problem in problems)
        for raw in raws:
            label = f"{piece.path} ({raw.time}Z)"
            out.frames.append(to_rain_rate(_with_zr(raw, zr), label, max_rain_rate=max_rain_rate))
    except Exception as exc:  # report the piece, keep going
        out.frames.clear()
        out.errors.append((piece.label if piece.stop else str(piece.path),
                           f"{type(exc).__name__}: {exc}{_wrong_format_hint(piece.path, piece.fmt)}"))
    return out


def _decoded(
    pieces: Iterable[Piece], workers: int, max_rain_rate: float, zr: tuple[float, float] | None
) -> Iterator[Decoded]:
    """Decoded pieces in order, with a bounded number in flight."""
    if workers <= 1:
        for piece in pieces:
            yield _safe_decode(piece, max_rain_rate, zr)
        return
    with worker_pool(workers) as pool:
        pending: deque[Future] = deque()
        queue = iter(pieces)
        for piece in queue:
            pending.append(pool.submit(_safe_decode, piece, max_rain_rate, zr))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            next_piece = next(queue, None)
            if next_piece is not None:
                pending.append(pool.submit(_safe_decode, next_piece, max_rain_rate, zr))
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
    zr: tuple[float, float] | None = None,
) -> IngestReport:
    """Ingest files into ``store``/``product``; see the module docstring for the guarantees.

    Holds the product's writer lock for the whole run (``pipelines.locking``): a second writer
    waits up to ``lock_timeout`` seconds, then gets ``WriterBusy``. ``zr`` (a, b) replaces every
    importer's Z-R relation for reflectivity."""
    if fmt != AUTO:
        get_importer(fmt)  # unknown format: fail before touching anything
    archive = ProductArchive(store, product, storage_options, lock_timeout=lock_timeout)
    with archive.writer_lock():
        return _ingest_locked(archive, paths, fmt, workers, batch_size, max_rain_rate, on_file, files, zr)


def _ingest_locked(
    archive: ProductArchive, paths: Iterable[str | Path], fmt: str, workers: int, batch_size: int,
    max_rain_rate: float, on_file: Callable[[Path], None] | None, files: list[Path] | None,
    zr: tuple[float, float] | None = None,
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

    for decoded in _decoded(plan_pieces(files, fmt), workers, max_rain_rate, zr):
        path = decoded.piece.path
        if on_file is not None and decoded.piece.last:
            on_file(path)
        report.failed.extend(decoded.errors)
        for result in decoded.frames:
            if grid is None:
                grid = result.grid  # the first good frame defines a new product's grid
            try:
                archive.check_grid(result, grid)
            except GridMismatchError as exc:
                report.failed.append((str(path), str(exc)))
                break  # one file has one grid: its other frames would say the same
            frame_source = result.attrs.get("source_product")
            if source is None:
                source = frame_source  # the first good frame names the product's source too
            elif frame_source != source:  # e.g. OPERA rain rate and 1-h accumulation in one folder
                report.failed.append((str(path), f"source product {frame_source!r} is not product "
                                      f"'{archive.product}''s {source!r}: ingest it into a product of its own "
                                      "(another --product)"))
                break
            for key, value in result.qc.items():
                report.qc[key] = report.qc.get(key, 0) + value
            batch.append(result)
            if len(batch) >= batch_size:
                commit()
    if batch:
        commit()
    return report
