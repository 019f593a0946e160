"""The archive's commands: ``nowcast ingest`` and ``nowcast store info|show`` (typer + rich).

Also the pieces every layer's commands share: the ``--store`` option, the console, progress bars
and ``store_errors``. ``nowcast_cli.main`` composes this app with the model and service commands.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
store_app = typer.Typer(help="Inspect a Zarr archive.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console(stderr=True)
#: the --store option every command shares (NOWCAST_STORE in the environment)
StoreOption = Annotated[str, typer.Option(help="Zarr store: a local path or an fsspec URL.", envvar="NOWCAST_STORE")]


def progress_bar() -> Any:
    """The progress display of long commands (on stderr, so --json output stays clean): a bar on a
    terminal, periodic plain lines otherwise (``pipelines.progress``: cron, batch and CI logs)."""
    from pipelines.progress import progress_display

    return progress_display(console)


@contextlib.contextmanager
def store_errors(store: str) -> Iterator[None]:
    """A store that cannot be used (bucket, credentials, network) is one line and exit 2, not a traceback;
    damaged data (``pipelines.integrity``) one line naming product, time and chunk, and exit 65."""
    from pipelines.integrity import EXIT_DAMAGED, damaged_from
    from pipelines.store import store_problem

    try:
        yield
    except (typer.Exit, typer.BadParameter):
        raise
    except Exception as exc:
        damaged = damaged_from(exc)
        if damaged is not None:
            console.print(f"[red]error:[/] {damaged}", soft_wrap=True)
            raise typer.Exit(EXIT_DAMAGED) from None
        problem = store_problem(exc, store)
        if problem is None:
            raise
        console.print(f"[red]error:[/] {problem}", soft_wrap=True)
        raise typer.Exit(2) from None


#: exit status of an ingest stopped by a full disk (sysexits' EX_IOERR); 1 stays "a file was rejected"
EXIT_DISK_FULL = 74


def _stored_frames(store: str, product: str) -> int | None:
    """Frames the product holds now (0 before it exists; None when that cannot be read)."""
    from pipelines.store import ProductArchive

    try:
        archive = ProductArchive(store, product)
        return len(archive.times()) if archive.exists() else 0
    except Exception:
        return None


def run_ingest(paths: list[Path], fmt: str, store: str, product: str, workers: int, batch_size: int,
               lock_timeout: float = 60.0, zr: tuple[float, float] | None = None, json_out: bool = False):
    from pipelines.ingest import discover, ingest
    from pipelines.locking import EXIT_BUSY, WriterBusy
    from pipelines.store import ProductArchive, disk_full, settle_pending_writes

    try:
        files = discover(paths)
    except FileNotFoundError as exc:  # a mistyped path: one line, not a traceback
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if not files:  # nothing to do is not success: a wrong folder would otherwise pass unnoticed
        from pipelines.info import holdings

        console.print(f"[red]error:[/] no files under {', '.join(map(str, paths))} (searched recursively, hidden "
                      f"files skipped); nothing ingested. {holdings(store, product)}", soft_wrap=True)
        raise typer.Exit(2)
    before = _stored_frames(store, product)
    try:
        with store_errors(store), progress_bar() as progress:
            task = progress.add_task(f"ingest {product}", total=len(files))
            report = ingest(
                paths, store, product, fmt=fmt, workers=workers, batch_size=batch_size,
                on_file=lambda _p: progress.advance(task), files=files, lock_timeout=lock_timeout, zr=zr,
            )
    except WriterBusy as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BUSY) from None
    except OSError as exc:
        if not disk_full(exc):
            raise
        settle_pending_writes()  # the failed batch's other chunk writes end before anything is released
        archive, released, left = ProductArchive(store, product), None, None
        with contextlib.suppress(Exception):  # uncommitted chunks and an incomplete journal must not keep it full
            released = archive.recover()
        with contextlib.suppress(Exception):
            left = archive.journal_left()
        after = _stored_frames(store, product)
        committed = after - before if after is not None and before is not None else None
        journal = {None: "none left",
                   "complete": "kept: a complete merge journal, which readers see and the rerun finishes",
                   "incomplete": "left: an incomplete merge journal, which the next write removes"}[left]
        summary = {"product": product, "store": store, "error": "disk_full", "files": len(files),
                   "frames_committed": committed, "frames_in_store": after, "released": released,
                   "journal": journal, "exit_code": EXIT_DISK_FULL}
        if json_out:
            typer.echo(json.dumps(summary, indent=2))
        console.print(
            f"[red]error:[/] the disk is full ({getattr(exc, 'filename', None) or store}): ingest of {product} "
            f"stopped. {committed if committed is not None else 'An unknown number of'} frame(s) were committed "
            f"before it filled ({after if after is not None else '?'} stored in all); every committed frame is "
            f"whole{', ' + released if released else ''}, and "
            f"{'the staging journal is ' + journal if left else 'no staging journal holds space'}. "
            "Free space (or grow the volume), then rerun the same command: frames already stored are skipped.",
            soft_wrap=True)
        raise typer.Exit(EXIT_DISK_FULL) from None
    return report


def print_report(report) -> None:
    console.print(
        f"[bold]{report.product}[/]: {report.files} files, {report.written} frames written, "
        f"{report.already_present} already present, {report.inserted_out_of_order} merged out of order, "
        f"{len(report.failed)} rejected"
    )
    if report.recovered:
        console.print(f"recovered: {report.recovered}")
    if report.qc:
        console.print("quality control: " + ", ".join(f"{k} {v}" for k, v in sorted(report.qc.items())))
    for path, error in report.failed:  # the path once: most errors start with it too
        error = str(error)
        kind, sep, rest = error.partition(": ")
        if rest.startswith(f"{path}: "):
            error = f"{kind}{sep}{rest[len(str(path)) + 2:]}"
        elif error.startswith(f"{path}: "):
            error = error[len(str(path)) + 2:]
        console.print(f"[red]rejected[/] {path}: {error}", soft_wrap=True)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (searched recursively).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Importer name, or 'auto'.")] = "auto",
    store: StoreOption = "data/archive.zarr",
    product: Annotated[str, typer.Option(help="Product (group) name in the store.")] = ...,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Frames per commit.")] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep watching PATHS (directories) for new files.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.")] = 10.0,
    settle: Annotated[float, typer.Option(help="With --watch, take files unchanged for this many seconds.")] = 2.0,
    lock_timeout: Annotated[float, typer.Option(
        help="One writer per product: wait this many seconds for another writer, then exit 75.")] = 60.0,
    zr: Annotated[tuple[float, float] | None, typer.Option(
        "--zr", metavar="A B", help="Z-R relation Z = A R^B for reflectivity (default: the importer's; "
        "cf_netcdf: Marshall-Palmer 200 1.6).")] = None,
) -> None:
    """Decode radar/satellite files to mm/h and append them to a product in a Zarr store."""
    from pipelines.importers import formats

    if format not in formats():
        raise typer.BadParameter(f"unknown format {format!r}; choose from {', '.join(formats())}")
    if watch:
        from pipelines.watch import watch as run_watch

        def report_poll(poll: int, report) -> None:
            typer.echo(json.dumps({"poll": poll, **report.as_dict()}), nl=True)
            print_report(report)

        try:
            run_watch(paths, store, product, fmt=format, workers=workers, batch_size=batch_size, interval=interval,
                      settle_seconds=settle, on_report=report_poll)
        except NotADirectoryError as exc:
            raise typer.BadParameter(str(exc)) from exc
        return
    if zr is not None and (zr[0] <= 0 or zr[1] <= 0):
        raise typer.BadParameter(f"--zr A B must both be positive, got {zr[0]:g} {zr[1]:g}")
    report = run_ingest(paths, format, store, product, workers, batch_size, lock_timeout, zr, json_out=json_out)
    if json_out:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    raise typer.Exit(report.exit_code)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def print_summary(summary: dict) -> None:
    out = Console()
    if not summary["products"]:
        out.print(f"store {summary['store']}: no products")
    for p in summary["products"]:
        g = p["grid"]
        missing = sum(gap["missing_frames"] for gap in p["gaps"])
        table = Table(title=f"{summary['store']} :: {p['product']}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        rows = {
            "frames": str(p["frames"]),
            "time range (UTC)": f"{p['start']} .. {p['end']}",
            "step": f"{p['step_minutes']:g} min" if p["step_minutes"] else "-",
            "gaps": f"{len(p['gaps'])} ({missing} missing frames)",
            "grid": f"{g['ny']} x {g['nx']} pixels of {g['dx_m']:g} x {g['dy_m']:g} {g['units']}",
            f"extent ({g['units']})": f"x {g['x_range_m'][0]:.7g}..{g['x_range_m'][1]:.7g}, "
            f"y {g['y_range_m'][0]:.7g}..{g['y_range_m'][1]:.7g}",
            "CRS": p["crs"]["proj4"],
            "size on disk": _human_bytes(p["size_on_disk_bytes"]),
            **{k.replace("_", " "): str(v) for k, v in p["attrs"].items()},
        }
        for key, value in rows.items():
            table.add_row(key, value)
        out.print(table)


def print_overlap(overlap: dict) -> None:
    time, space = overlap["time"], overlap["space"]
    table = Table(title=f"overlap :: {overlap['first']} with {overlap['second']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    span = f"{time['start']} .. {time['end']} ({time['hours']:g} h)" if time["start"] else "none"
    table.add_row("time span of both", span)
    table.add_row("shared valid times", str(time["shared_valid_times"]))
    table.add_row(f"{overlap['first']} covered by {overlap['second']}", f"{100 * space['share_of_first']:.1f} %")
    if "x_range" in space:
        table.add_row(f"that region ({space['units']})", f"x {space['x_range'][0]:.7g}..{space['x_range'][1]:.7g}, "
                                                         f"y {space['y_range'][0]:.7g}..{space['y_range'][1]:.7g}")
    Console().print(table)


@store_app.command("info")
def store_info(
    store: StoreOption = "data/archive.zarr",
    product: Annotated[str | None, typer.Option(help="Only this product.")] = None,
    overlap: Annotated[str | None, typer.Option(
        help="With --product: also how this other product overlaps it in time and space.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Products, time range, step, gaps, grid, CRS and size on disk."""
    from pipelines.info import product_overlap, store_summary
    from pipelines.integrity import EXIT_DAMAGED, DamagedData

    if overlap and not product:
        raise typer.BadParameter("--overlap needs --product (the product it is compared with)")
    try:
        with store_errors(store):
            summary = store_summary(store, product)
            if overlap:
                summary["overlap"] = product_overlap(store, product, overlap)
    except KeyError as exc:
        console.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from exc
    except DamagedData as exc:  # the one product asked for is damaged (the others are listed as such)
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_DAMAGED) from None
    for damaged in summary.get("damaged", []):
        console.print(f"[red]damaged:[/] {damaged['error']}", soft_wrap=True)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
        if overlap:
            print_overlap(summary["overlap"])
    if summary.get("damaged"):  # the healthy products are shown above; the exit status says not all are
        raise typer.Exit(EXIT_DAMAGED)


@store_app.command("check")
def store_check(
    store: StoreOption = "data/archive.zarr",
    product: Annotated[str | None, typer.Option(help="Only this product.")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Drop what cannot be read (damaged frames; metadata rebuilt from its other copy), "
                         "so that re-ingesting the source files restores it.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Read every chunk and metadata file; name each damaged frame (product, time, chunk).

    Exits 0 when nothing is damaged, 65 when something was (also with --repair: the report says
    what was dropped; a second check then exits 0)."""
    from pipelines.check import check_store
    from pipelines.integrity import EXIT_DAMAGED

    try:
        with store_errors(store):
            report = check_store(store, product, repair=repair)
    except KeyError as exc:
        console.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    for p in report["products"]:
        state = "[red]damaged[/]" if p["damage"] else "[green]ok[/]"
        console.print(f"{p['product']}: {state}, {p['frames']} frames, {p['chunks_checked']} chunks read"
                      + ("" if p["checksummed"] else " (no checksums: written before they were added)"))
        for r in p["repaired"]:
            console.print(f"  repaired: {r}", soft_wrap=True)
    for line in report["lines"]:
        console.print(f"[red]damaged:[/] {line}", soft_wrap=True)
    if report["status"] != "ok":
        raise typer.Exit(EXIT_DAMAGED)


@store_app.command("show")
def store_show(
    product: Annotated[str, typer.Option(help="Product to draw.")],
    store: StoreOption = "data/archive.zarr",
    time: Annotated[str | None, typer.Option(help="Valid time (UTC, ISO); default the latest.")] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("frame.png"),
) -> None:
    """Draw one stored frame as a PNG (rain-rate colour scale, grey = nodata)."""
    from pipelines.integrity import EXIT_DAMAGED, DamagedData
    from pipelines.plots import plot_frame
    from pipelines.query import utc_text
    from pipelines.store import ProductArchive

    archive = ProductArchive(store, product)
    try:
        if not archive.exists():
            console.print(f"[red]error:[/] no product {product!r} in {store}")
            raise typer.Exit(2)
        window = archive.window(1, end=time)
    except ValueError as exc:  # not a frame of the product, or not a time at all
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except DamagedData as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_DAMAGED) from None
    grid = window.grid
    scale = 1.0 if grid.is_geographic else 1000.0
    extent = (grid.x[0] / scale, grid.x[-1] / scale, grid.y[-1] / scale, grid.y[0] / scale)
    path = plot_frame(window.frames[0], f"{product} {utc_text(window.end)}", out, extent,
                      "degrees" if grid.is_geographic else "km")
    console.print(f"wrote {path}")
