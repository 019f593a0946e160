"""The ``nowcast`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="Precipitation nowcasting from radar and satellite archives.", no_args_is_help=True)
store_app = typer.Typer(help="Inspect a Zarr archive.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console(stderr=True)
#: the --store option every command shares (NOWCAST_STORE in the environment)
StoreOption = Annotated[str, typer.Option(help="Zarr store: a local path or an fsspec URL.", envvar="NOWCAST_STORE")]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    )


@contextlib.contextmanager
def store_errors(store: str) -> Iterator[None]:
    """A store that cannot be used (bucket, credentials, network) is one line and exit 2, not a traceback."""
    from pipelines.store import store_problem

    try:
        yield
    except (typer.Exit, typer.BadParameter):
        raise
    except Exception as exc:
        problem = store_problem(exc, store)
        if problem is None:
            raise
        console.print(f"[red]error:[/] {problem}", soft_wrap=True)
        raise typer.Exit(2) from None


#: sysexits' EX_TEMPFAIL: another process holds the lock; try again later
EXIT_BUSY = 75


def run_ingest(paths: list[Path], fmt: str, store: str, product: str, workers: int, batch_size: int,
               lock_timeout: float = 60.0):
    from pipelines.ingest import discover, ingest
    from pipelines.locking import WriterBusy

    files = discover(paths)
    try:
        with store_errors(store), _progress() as progress:
            task = progress.add_task(f"ingest {product}", total=len(files))
            report = ingest(
                paths, store, product, fmt=fmt, workers=workers, batch_size=batch_size,
                on_file=lambda _p: progress.advance(task), files=files, lock_timeout=lock_timeout,
            )
    except WriterBusy as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BUSY) from None
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
    for path, error in report.failed:
        console.print(f"[red]rejected[/] {path}: {error}")


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
    report = run_ingest(paths, format, store, product, workers, batch_size, lock_timeout)
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


@store_app.command("info")
def store_info(
    store: StoreOption = "data/archive.zarr",
    product: Annotated[str | None, typer.Option(help="Only this product.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Products, time range, step, gaps, grid, CRS and size on disk."""
    from pipelines.info import store_summary

    try:
        with store_errors(store):
            summary = store_summary(store, product)
    except KeyError as exc:
        console.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from exc
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@store_app.command("show")
def store_show(
    product: Annotated[str, typer.Option(help="Product to draw.")],
    store: StoreOption = "data/archive.zarr",
    time: Annotated[str | None, typer.Option(help="Valid time (UTC, ISO); default the latest.")] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("frame.png"),
) -> None:
    """Draw one stored frame as a PNG (rain-rate colour scale, grey = nodata)."""
    from nowcast.plots import plot_frame
    from pipelines.query import utc_text
    from pipelines.store import ProductArchive

    archive = ProductArchive(store, product)
    if not archive.exists():
        console.print(f"[red]error:[/] no product {product!r} in {store}")
        raise typer.Exit(2)
    try:
        window = archive.window(1, end=time)
    except ValueError as exc:  # not a frame of the product, or not a time at all
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    grid = window.grid
    scale = 1.0 if grid.is_geographic else 1000.0
    extent = (grid.x[0] / scale, grid.x[-1] / scale, grid.y[-1] / scale, grid.y[0] / scale)
    path = plot_frame(window.frames[0], f"{product} {utc_text(window.end)}", out, extent,
                      "degrees" if grid.is_geographic else "km")
    console.print(f"wrote {path}")


def load_rule(path: Path | None, window_hours: float | None):
    """The promotion rule from YAML (defaults without one), with an optional window override."""
    import dataclasses

    from nowcast.registry import PromotionRule

    rule = PromotionRule.from_yaml(path) if path else PromotionRule()
    return dataclasses.replace(rule, window_hours=window_hours) if window_hours else rule


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(
    ctx: typer.Context,
    config: Annotated[list[Path] | None, typer.Option(
        help="LightningCLI YAML config(s), e.g. configs/convlstm.yaml. Required.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint when there is one.")] = True,
    registry: Annotated[Path | None, typer.Option(help="Model registry (lock, versions, production).")] = None,
    promote: Annotated[bool, typer.Option(help="Then verify against production; promote if better.")] = False,
    rule: Annotated[Path | None, typer.Option(help="Promotion rule YAML (configs/promotion.yaml).")] = None,
    window_hours: Annotated[float | None, typer.Option(help="Override the rule's held-out window (hours).")] = None,
) -> None:
    """Train a model (LightningCLI style: extra arguments such as --trainer.max_epochs 5 override the config).

    Safe from cron: resumes an interrupted run, holds a lock so two runs never collide (exit 75),
    and with --promote exits 0 when the new model was promoted, 3 when production was kept."""
    import contextlib
    import os

    from nowcast.registry import LOCKED, ModelRegistry, RegistryLocked
    from nowcast.registry import promote as run_promotion
    from nowcast.train_cli import run_training
    from nowcast.training import CheckpointMismatch

    if "--help" in ctx.args or "-h" in ctx.args:
        # this command's options, then every key a config or an override may set (LightningCLI's)
        typer.echo(ctx.get_help())
        typer.echo("\nConfig keys (YAML sections, or overrides such as --trainer.max_epochs 5):\n")
        run_training(["fit", "--help"])
        return
    if not config:
        raise typer.BadParameter("--config is required (e.g. --config configs/convlstm.yaml); "
                                 "`nowcast train --help` lists every config key")
    if promote and registry is None:
        raise typer.BadParameter("--promote needs --registry")
    args = ["fit"]
    for path in config:
        args += ["--config", str(path)]
    args += list(ctx.args)
    if resume and not any(a.startswith("--ckpt_path") for a in ctx.args):
        args += ["--ckpt_path", "last"]
    is_rank_zero = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    lock_dir = ModelRegistry(registry) if registry else ModelRegistry(Path("runs"))
    try:
        with lock_dir.lock() if is_rank_zero else contextlib.nullcontext():
            cli = run_training(args)
            if not (promote and cli.trainer.is_global_zero):
                return
            callback = cli.trainer.checkpoint_callback
            checkpoint = (callback.best_model_path or callback.last_model_path) if callback else None
            if not checkpoint:
                console.print("[red]error:[/] training left no checkpoint to promote")
                raise typer.Exit(2)
            data = cli.datamodule.hparams
            code, decision = run_promotion(
                ModelRegistry(registry), checkpoint, data.store, data.products[0], load_rule(rule, window_hours),
            )
            console.print(json.dumps(decision, indent=2))
            raise typer.Exit(code)
    except RegistryLocked as exc:
        console.print(f"[yellow]locked:[/] {exc}; not starting a second run")
        raise typer.Exit(LOCKED) from exc
    except CheckpointMismatch as exc:
        console.print(f"[red]error:[/] will not resume from the last checkpoint, it is another run's ({exc}). "
                      "Start over with --no-resume, or give this run its own checkpoint directory "
                      "(trainer.callbacks ModelCheckpoint dirpath).")
        raise typer.Exit(2) from exc


@app.command()
def promote(
    checkpoint: Annotated[Path, typer.Option(help="Candidate checkpoint from nowcast train.")],
    registry: Annotated[Path, typer.Option(help="Model registry directory.")],
    product: Annotated[str, typer.Option(help="Product to verify on.")],
    store: StoreOption = "data/archive.zarr",
    rule: Annotated[Path | None, typer.Option(help="Promotion rule YAML (configs/promotion.yaml).")] = None,
    window_hours: Annotated[float | None, typer.Option(help="Override the rule's held-out window (hours).")] = None,
    crop: Annotated[int | None, typer.Option(help="Centred N x N window for verification.")] = None,
) -> None:
    """Register a checkpoint and make it production if it verifies better (exit 0 promoted, 3 kept, 2 error)."""
    from nowcast.registry import FAILED, ModelRegistry
    from nowcast.registry import promote as run_promotion

    try:
        code, decision = run_promotion(
            ModelRegistry(registry), checkpoint, store, product, load_rule(rule, window_hours), crop=crop,
        )
    except (KeyError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(FAILED) from exc
    typer.echo(json.dumps(decision, indent=2))
    raise typer.Exit(code)


@app.command()
def evaluate(
    product: Annotated[str, typer.Option(help="Product to verify against.")],
    model: Annotated[list[str], typer.Option(help="persistence, optical_flow, a checkpoint, or a shipped model.")],
    out: Annotated[Path, typer.Option(help="JSON report; .md, _csi.png and _case.gif are written beside it.")],
    store: StoreOption = "data/archive.zarr",
    start: Annotated[str | None, typer.Option(help="First init time (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option(help="Last init time (UTC, ISO).")] = None,
    crop: Annotated[int | None, typer.Option(help="Centred N x N window.")] = None,
    stride: Annotated[int, typer.Option(help="Every K-th init time.")] = 1,
    lead_steps: Annotated[
        int | None, typer.Option(help="Lead steps (default: the trained models' output steps).")
    ] = None,
) -> None:
    """Verify models against the archive: CSI/POD/FAR, MAE and FSS per lead time."""
    from nowcast.evaluate import evaluate as run_evaluation

    with _progress() as progress:
        task = progress.add_task("evaluate", total=None)
        try:
            report = run_evaluation(
                store, product, model, out, start=start, end=end, crop=crop, stride=stride, lead_steps=lead_steps,
                on_case=lambda: progress.advance(task), total=lambda n: progress.update(task, total=n),
            )
        except (KeyError, ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/] {exc.args[0] if exc.args else exc}")
            raise typer.Exit(2) from exc
    console.print(f"{report['n_cases']} cases ({report['n_dry_cases_skipped']} dry skipped); wrote "
                  + ", ".join(report.get("files", {}).values()))
    console.print(Path(report["files"]["markdown"]).read_text())


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="Service YAML (see configs/service.yaml).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve forecasts over HTTP (FastAPI + uvicorn)."""
    import uvicorn

    from service.app import create_app
    from service.settings import load_settings

    uvicorn.run(create_app(load_settings(config)), host=host, port=port, log_level="info")


@app.command()
def backfill(
    model: Annotated[str, typer.Option(help="persistence, optical_flow, a checkpoint, or a shipped model.")],
    product: Annotated[str, typer.Option(help="Product to forecast from.")],
    start: Annotated[str, typer.Option(help="First init time (UTC, ISO).")],
    end: Annotated[str, typer.Option(help="Last init time (UTC, ISO).")],
    out: Annotated[str, typer.Option(help="Zarr forecast store (path or fsspec URL).")],
    store: StoreOption = "data/archive.zarr",
    every: Annotated[int, typer.Option(help="Every K-th frame as an init time.")] = 1,
    lead_steps: Annotated[int | None, typer.Option(help="Lead steps (default: the model's output steps).")] = None,
    scheduler: Annotated[str, typer.Option(help="'local' (processes) or a Dask scheduler tcp://HOST:PORT.")] = "local",
    workers: Annotated[int, typer.Option(help="Local worker processes.")] = 2,
    batch: Annotated[int, typer.Option(help="Init times per forward pass.")] = 4,
    registry: Annotated[
        Path | None, typer.Option(help="Model registry, for --model production.", envvar="NOWCAST_REGISTRY")
    ] = None,
) -> None:
    """Forecast every init time of a range into a Zarr forecast store (resumable, idempotent).

    --model production takes the registry's production version."""
    from nowcast.backfill import backfill as run_backfill
    from nowcast.registry import ModelRegistry

    if model == "production":
        checkpoint = ModelRegistry(registry).production_checkpoint() if registry else None
        if checkpoint is None:
            console.print("[red]error:[/] --model production needs --registry (or NOWCAST_REGISTRY) "
                          "with a production version")
            raise typer.Exit(2)
        model = str(checkpoint)

    with store_errors(out if "://" in out else store), _progress() as progress:
        task = progress.add_task(f"backfill {product}", total=None)
        try:
            summary = run_backfill(
                model, store, product, start, end, out, every=every, lead_steps=lead_steps, scheduler=scheduler,
                workers=workers, batch=batch,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except (KeyError, ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/] {exc.args[0] if exc.args else exc}")
            raise typer.Exit(2) from exc
    console.print(
        f"{summary['init_times']} init times {summary['first']} .. {summary['last']}: "
        f"{summary['written']} written, {summary['skipped_already_done']} already done -> {summary['out']}"
    )


@app.command()
def demo(
    store: Annotated[str, typer.Option(help="Where the demo archive goes.")] = "data/demo.zarr",
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
    report: Annotated[Path, typer.Option(help="Where the demo forecast report goes.")] = Path("data/demo_report.json"),
) -> None:
    """The main job on the embedded default: ingest sample radar into a local store, summarise it,
    then nowcast it with the baselines and the best shipped network and verify (table, CSI plot,
    GIF of a forecast with each model beside the observation)."""
    from nowcast.evaluate import evaluate as run_evaluation
    from nowcast.forecaster import shipped_models
    from pipelines.info import store_summary
    from pipelines.sample_data import demo_source

    source = demo_source()
    console.print(f"sample data: {source.description}")
    if source.files:
        print_report(run_ingest(source.files, source.format, store, source.product, workers, 16))
    else:
        from pipelines.store import ProductArchive
        from pipelines.synthetic import synthetic_frames

        ProductArchive(store, source.product).write(synthetic_frames())
    summary = store_summary(store, source.product)
    print_summary(summary)
    grid = summary["products"][0]["grid"]
    crop = min(512, grid["ny"], grid["nx"])
    with _progress() as progress:
        task = progress.add_task("nowcast + verify", total=None)
        result = run_evaluation(
            store, source.product, ["persistence", "optical_flow", *shipped_models()[:1]], report, crop=crop,
            stride=3, lead_steps=6,
            on_case=lambda: progress.advance(task), total=lambda n: progress.update(task, total=n),
        )
    Console().print(Path(result["files"]["markdown"]).read_text())
    console.print("forecast files: " + ", ".join(result["files"].values()))


if __name__ == "__main__":
    app()
