"""The model commands: ``nowcast train``, ``promote``, ``evaluate``, ``backfill``, ``verify`` and ``demo``.

``nowcast_cli.main`` composes this app with the archive's (``pipelines.cli``) and the service's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.cli import StoreOption, console, print_report, print_summary, progress_bar, run_ingest, store_errors

app = typer.Typer(no_args_is_help=True)


#: where --model NAME is looked up beyond baselines, shipped models and checkpoint files
RegistryOption = Annotated[Path | None, typer.Option(
    "--registry", "--model-store", help="Model store: --model production, or a version by name.",
    envvar="NOWCAST_REGISTRY")]
ServiceConfigOption = Annotated[Path | None, typer.Option(
    help="Service YAML whose models: 'label=path' entries --model may name.", envvar="NOWCAST_SERVICE_CONFIG")]


def resolve_or_exit(spec: str, registry: Path | None, service_config: Path | None):
    """``--model`` resolved (``nowcast.model_names``), or the names that exist and exit 2."""
    from nowcast.model_names import resolve_model

    if spec == "production" and registry is None:
        console.print("[red]error:[/] --model production needs --registry (or NOWCAST_REGISTRY) "
                      "with a production version")
        raise typer.Exit(2)
    try:
        return resolve_model(spec, registry, service_config)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def fail(exc: Exception, store: str, product: str | None = None, code: int = 2) -> typer.Exit:
    """One line for an error the user can act on; an unknown product also lists what the store holds."""
    from pipelines.info import holdings

    message = str(exc.args[0] if exc.args else exc)
    if isinstance(exc, KeyError) and message.startswith("no product"):
        message = holdings(store, product)
    console.print(f"[red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def load_rule(path: Path | None, window_hours: float | None):
    """The promotion rule from YAML (defaults without one), with an optional window override."""
    import dataclasses

    from nowcast.promotion import PromotionRule

    rule = PromotionRule.from_yaml(path) if path else PromotionRule()
    return dataclasses.replace(rule, window_hours=window_hours) if window_hours else rule


def print_checkpoints(callback) -> None:
    """Where training left its checkpoints, on stdout (a script reads the path from there)."""
    if callback is None:
        console.print("no checkpoint saved (trainer.enable_checkpointing is off)")
        return
    best, last = getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")
    score = getattr(callback, "best_model_score", None)
    monitor = getattr(callback, "monitor", None)
    if best:
        typer.echo(f"best checkpoint: {Path(best).resolve()}"
                   + (f" ({monitor} {float(score):.4g})" if monitor and score is not None else ""))
    if last:
        typer.echo(f"last checkpoint: {Path(last).resolve()}")
    if not best and not last:
        console.print("no checkpoint saved (no epoch finished)")
    else:
        console.print("use it: nowcast evaluate --model PATH ..., or add it to a model store with nowcast promote")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(
    ctx: typer.Context,
    config: Annotated[list[Path] | None, typer.Option(
        help="LightningCLI YAML config(s), e.g. configs/convlstm.yaml. Required.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint when there is one.")] = True,
    registry: Annotated[Path | None, typer.Option(
        "--registry", "--model-store", help="Model store (lock, versions, production).")] = None,
    promote: Annotated[bool, typer.Option(help="Then verify against production; promote if better.")] = False,
    rule: Annotated[Path | None, typer.Option(help="Promotion rule YAML (configs/promotion.yaml).")] = None,
    window_hours: Annotated[float | None, typer.Option(help="Override the rule's held-out window (hours).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error, not only its message.")
                     ] = False,
) -> None:
    """Train a model (LightningCLI style: extra arguments such as --trainer.max_epochs 5 override the config).

    Safe from cron: resumes an interrupted run, holds a lock so two runs never collide (exit 75),
    and with --promote exits 0 when the new model was promoted, 3 when production was kept."""
    import contextlib
    import os

    from nowcast.model_store import LOCKED, ModelStore, StoreLocked
    from nowcast.promotion import promote as run_promotion
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
    lock_dir = ModelStore(registry) if registry else ModelStore(Path("runs"))
    try:
        with lock_dir.lock() if is_rank_zero else contextlib.nullcontext():
            cli = run_training(args)
            callback = cli.trainer.checkpoint_callback
            if cli.trainer.is_global_zero:
                print_checkpoints(callback)
            if not (promote and cli.trainer.is_global_zero):
                return
            checkpoint = (callback.best_model_path or callback.last_model_path) if callback else None
            if not checkpoint:
                console.print("[red]error:[/] training left no checkpoint to promote")
                raise typer.Exit(2)
            data = cli.datamodule.hparams
            code, decision = run_promotion(
                ModelStore(registry), checkpoint, data.store, data.products[0], load_rule(rule, window_hours),
            )
            console.print(json.dumps(decision, indent=2))
            if decision.get("explanation"):
                console.print(decision["explanation"], soft_wrap=True)
            raise typer.Exit(code)
    except StoreLocked as exc:
        console.print(f"[yellow]locked:[/] {exc}; not starting a second run")
        raise typer.Exit(LOCKED) from exc
    except CheckpointMismatch as exc:
        console.print(f"[red]error:[/] will not resume from the last checkpoint, it is another run's ({exc}). "
                      "Start over with --no-resume, or give this run its own checkpoint directory "
                      "(trainer.callbacks ModelCheckpoint dirpath).")
        raise typer.Exit(2) from exc
    except (ValueError, LookupError, FileNotFoundError) as exc:
        # a config or data problem the user can act on: its message, not 150 lines of Lightning's stack
        if debug:
            raise
        message = str(exc.args[0] if exc.args else exc)
        console.print(f"[red]error:[/] {message}\n(nowcast train --debug ... shows the traceback)", soft_wrap=True)
        raise typer.Exit(2) from None
    except Exception as exc:
        # damaged data, raised here or (as text) in a data-loader worker: the one line that names it
        from pipelines.integrity import EXIT_DAMAGED, damage_message

        damage = damage_message(exc)
        if damage is None or debug:
            raise
        console.print(f"[red]error:[/] training stopped on {damage}. `nowcast store check --store` with the "
                      "config's data.store lists every damaged frame; `--repair` drops them, and re-ingesting their "
                      "source files restores them.\n(nowcast train --debug ... shows the traceback)", soft_wrap=True)
        raise typer.Exit(EXIT_DAMAGED) from None


@app.command()
def promote(
    checkpoint: Annotated[Path, typer.Option(help="Candidate checkpoint from nowcast train.")],
    registry: Annotated[Path, typer.Option("--registry", "--model-store", help="Model store directory.")],
    product: Annotated[str, typer.Option(help="Product to verify on.")],
    store: StoreOption = "data/archive.zarr",
    rule: Annotated[Path | None, typer.Option(help="Promotion rule YAML (configs/promotion.yaml).")] = None,
    window_hours: Annotated[float | None, typer.Option(help="Override the rule's held-out window (hours).")] = None,
    crop: Annotated[int | None, typer.Option(help="Centred N x N window for verification.")] = None,
) -> None:
    """Add a checkpoint to the model store; make it production if it verifies better.

    Exit 0 promoted, 3 kept, 2 error."""
    from nowcast.model_store import ModelStore
    from nowcast.promotion import FAILED
    from nowcast.promotion import promote as run_promotion

    try:
        code, decision = run_promotion(
            ModelStore(registry), checkpoint, store, product, load_rule(rule, window_hours), crop=crop,
        )
    except (LookupError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(FAILED) from exc
    typer.echo(json.dumps(decision, indent=2))
    if decision.get("explanation"):
        console.print(decision["explanation"], soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def evaluate(
    product: Annotated[str, typer.Option(help="Product to verify against.")],
    out: Annotated[Path, typer.Option(help="JSON report; .md, _csi.png and _case.gif are written beside it.")],
    model: Annotated[list[str] | None, typer.Option(
        help="persistence, optical_flow, a checkpoint, or a shipped model (or use --forecasts).")] = None,
    forecasts: Annotated[list[str] | None, typer.Option(
        help="A forecast store from nowcast backfill, scored without rerunning its model (instead of --model).")
    ] = None,
    store: StoreOption = "data/archive.zarr",
    start: Annotated[str | None, typer.Option(help="First init time (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option(help="Last init time (UTC, ISO).")] = None,
    crop: Annotated[int | None, typer.Option(help="Centred N x N window.")] = None,
    stride: Annotated[int, typer.Option(help="Every K-th init time.")] = 1,
    lead_steps: Annotated[
        int | None, typer.Option(
            help="Lead steps (default: the trained models' output steps; with --forecasts, the stores').")
    ] = None,
    precision: Annotated[str, typer.Option(
        help="32, or bf16: the networks under bfloat16 autocast (fast on GPUs; on CPUs without AVX-512 BF16 "
             "it is emulated and slow).")] = "32",
    time_interpolation: Annotated[str, typer.Option(
        help="How a network trained at another time step gets this product's frames: motion "
             "(motion-compensated) or linear.")] = "motion",
    probability_matching: Annotated[str, typer.Option(
        help="auto (each checkpoint's own choice; none for baselines), none, cdf (each lead matched to the "
             "distribution of the last observed frame) or cdf_wet (only the intensities inside the forecast's "
             "1 mm/h area matched; the area kept).")] = "auto",
    members: Annotated[int | None, typer.Option(
        help="Ensemble members of the models that forecast them (steps; default theirs, 20): their CRPS, Brier "
             "score, ROC area and reliability diagram are scored too.")] = None,
    registry: RegistryOption = None,
    service_config: ServiceConfigOption = None,
) -> None:
    """Verify models against the archive: CSI/POD/FAR, MAE and FSS per lead time.

    With --forecasts (repeatable), backfilled forecast stores are scored instead of running models:
    the init times done in every store, the same case rules and report; a store's probabilities
    (backfill --threshold) are scored as a probabilistic model's (Brier score, ROC area per threshold)."""
    from nowcast.evaluate import evaluate as run_evaluation
    from nowcast.score_forecasts import evaluate_forecasts

    if bool(model) == bool(forecasts):
        console.print("[red]error:[/] give --model (models to run) or --forecasts (backfilled forecast stores to "
                      "score)" + (", not both" if model else ""))
        raise typer.Exit(2)
    named = [resolve_or_exit(spec, registry, service_config) for spec in model or []]
    model = [f"{m.name}={m.spec}" if m.name else m.spec for m in named]
    with store_errors(store), progress_bar() as progress:
        task = progress.add_task("evaluate", total=None)
        callbacks = {"on_case": lambda: progress.advance(task), "total": lambda n: progress.update(task, total=n)}
        try:
            if forecasts:
                report = evaluate_forecasts(store, forecasts, out, start=start, end=end, crop=crop, stride=stride,
                                            lead_steps=lead_steps, product=product, **callbacks)
            else:
                report = run_evaluation(store, product, model, out, start=start, end=end, crop=crop, stride=stride,
                                        lead_steps=lead_steps, precision=precision,
                                        time_interpolation=time_interpolation,
                                        probability_matching=None if probability_matching == "auto"
                                        else probability_matching, members=members, **callbacks)
        except (LookupError, ValueError, FileNotFoundError) as exc:
            raise fail(exc, store, product) from exc
    # a table of dashes is no answer: say why, and what the archive holds
    if report["n_cases"] == 0 and not report.get("damaged_cases_skipped"):
        from pipelines.info import holdings

        span = f"{start or 'the start'} .. {end or 'the end'}"
        why = (f"all {report['n_dry_cases_skipped']} cases in {span} were dry" if report["n_dry_cases_skipped"]
               else f"no case in {span} has its history and {len(report['lead_minutes'])} leads without a gap")
        console.print(f"[red]error:[/] nothing verified: {why}. {holdings(store, product)}", soft_wrap=True)
        raise typer.Exit(2)
    awaiting = report.get("n_cases_awaiting_observations")
    console.print(f"{report['n_cases']} cases ({report['n_dry_cases_skipped']} dry skipped"
                  + (f", {awaiting} awaiting observations" if awaiting else "") + "); wrote "
                  + ", ".join(report.get("files", {}).values()))
    console.print(Path(report["files"]["markdown"]).read_text())
    for label, entry in report["models"].items():
        if entry.get("auxiliary_cases_missing"):  # zeros-plus-mask stood in for these cases' frames
            console.print(f"{label}: cases lacking an auxiliary frame: {json.dumps(entry['auxiliary_cases_missing'])}")
    if report.get("damaged_cases_skipped"):  # scored without them: say so, and exit non-zero
        from pipelines.integrity import EXIT_DAMAGED

        for case in report["damaged_cases_skipped"]:
            console.print(f"[red]skipped[/] case {case['init']}: {case['error']}", soft_wrap=True)
        raise typer.Exit(EXIT_DAMAGED)


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
    registry: RegistryOption = None,
    verify: Annotated[bool, typer.Option(
        help="Score the forecasts whose observations are in, and leave the rest to later verification passes "
             "(GET /v1/skill).")] = True,
    label: Annotated[str | None, typer.Option(
        help="Name this run's forecasts are recorded under (default: the model's name); the weights' "
             "fingerprint always rides beside it.")] = None,
    threshold: Annotated[list[float] | None, typer.Option(
        help="Also store P(rate >= this, mm/h) per lead (repeatable); needs a model with probabilities "
             "(steps).")] = None,
    members: Annotated[int | None, typer.Option(
        help="Ensemble members the probabilities are counted over (default: the model's, 20 for steps).")] = None,
    service_config: ServiceConfigOption = None,
) -> None:
    """Forecast every init time of a range into a Zarr forecast store (resumable, idempotent).

    --model production takes the model store's production version; a version's name, or a label of
    the service config's models, names that checkpoint."""
    from nowcast.backfill import backfill as run_backfill

    resolved = resolve_or_exit(model, registry, service_config)
    model, label = resolved.spec, label or resolved.name

    with store_errors(out if "://" in out else store), progress_bar() as progress:
        task = progress.add_task(f"backfill {product}", total=None)
        try:
            summary = run_backfill(
                model, store, product, start, end, out, every=every, lead_steps=lead_steps, scheduler=scheduler,
                workers=workers, batch=batch, verify=verify, label=label, thresholds=threshold, members=members,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except (LookupError, ValueError, FileNotFoundError) as exc:
            raise fail(exc, store, product) from exc
    console.print(
        f"{summary['identity']}: {summary['init_times']} init times {summary['first']} .. {summary['last']}: "
        f"{summary['written']} written, {summary['skipped_already_done']} already done -> {summary['out']}"
    )
    if "auxiliary_cases_missing" in summary:  # written with zeros-plus-mask for the missing frames
        console.print(f"init times lacking an auxiliary frame: {json.dumps(summary['auxiliary_cases_missing'])}")
    if "verification" in summary:
        v = summary["verification"]
        console.print(f"verified: {v['scored']} scored, {v['dry']} dry, {v['waiting']} awaiting observations, "
                      f"{v['missing_observations']} given up (nowcast verify, or the service, scores the rest)")


@app.command()
def verify(
    store: StoreOption = "data/archive.zarr",
    product: Annotated[str | None, typer.Option(help="Only this product's ledger (default: every product's).")
                       ] = None,
    hours: Annotated[float, typer.Option(help="Window of the scores printed after the pass.")] = 24.0,
    grace_minutes: Annotated[float, typer.Option(
        help="How long past its last lead a forecast waits for missing observations.")] = 120.0,
    out: Annotated[Path | None, typer.Option(help="Write the rolling scores (GET /v1/skill's JSON) here.")] = None,
) -> None:
    """Score the kept forecasts whose observations are now in: one pass of the service's live
    verification (for cron, or without a service), then the rolling scores per model and lead.

    Exits 2, saying what the archive holds, when no forecast of the product is kept there."""
    from nowcast.live_verification import VerificationLedger, verify_store
    from nowcast.probabilistic_verification import probabilistic_table_markdown
    from nowcast.verification import scores_table_markdown

    with store_errors(store), progress_bar() as progress:
        task = progress.add_task("verify", total=None)
        passes = verify_store(store, product, grace_minutes=grace_minutes,
                              on_case=lambda model, outcome: progress.advance(task))
    if not passes:  # nothing to do is not success (as evaluate, backfill, ingest): say what the archive holds
        from pipelines.info import holdings

        console.print(f"[red]error:[/] nothing to verify: no forecast of {product or 'any product'} is kept in "
                      f"{store} (the service keeps those it makes from the archive; nowcast backfill registers its "
                      f"stores). {holdings(store, product)}", soft_wrap=True)
        raise typer.Exit(2)
    answers = {}
    for name, done in passes.items():
        console.print(f"{name}: {done.scored} scored, {done.dry} dry, {done.waiting} awaiting observations, "
                      f"{done.missing_observations} given up"
                      + (f", {done.unreadable} unreadable (skipped; see the log)" if done.unreadable else ""))
        answers[name] = VerificationLedger(store, name).rolling(hours)
        scored = {m["model"]: m["scores"] for m in answers[name]["models"] if m["scores"]}
        if scored:
            console.print(f"last {hours:g} h to {answers[name]['end']}:")
            console.print(scores_table_markdown(scored))
        probabilistic = {model: rows for model, rows in scored.items() if any(row.get("brier") for row in rows)}
        if probabilistic:  # the probability forecasts kept: Brier score and ROC area per threshold
            console.print(probabilistic_table_markdown(probabilistic))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(answers if product is None else answers[product], indent=1))


#: the demo verifies a centred window this many pixels wide (S-PROG and the motion fields grow with its
#: area: the whole demo took 36 s on this 2-core CPU at 384, 57 s at 512)
DEMO_CROP = 384


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
    crop = min(DEMO_CROP, grid["ny"], grid["nx"])
    with progress_bar() as progress:
        task = progress.add_task("nowcast + verify", total=None)
        result = run_evaluation(
            store, source.product, ["persistence", "optical_flow", *shipped_models()[:1]], report, crop=crop,
            stride=3, lead_steps=6,
            on_case=lambda: progress.advance(task), total=lambda n: progress.update(task, total=n),
        )
    Console().print(Path(result["files"]["markdown"]).read_text())
    console.print("forecast files: " + ", ".join(result["files"].values()))
