"""``make weights``: rebuild every shipped model from the radar in ../shared/data.

Steps, each resumable: ingest the training and test events into ``data/weights/`` (test
events in a store of their own, so no model can see them), train each model with its
``configs/weights/<name>.yaml`` (checkpointed; an interrupted run continues; then
``<name>.tune.yaml`` where there is one), then export the best checkpoint (by the validation CSI
at 1 mm/h its config monitors: at 30 min, or averaged over the leads; a fine-tuning stage only
when it beat the stage before on that) as ``nowcast/weights/<name>.ckpt``:
the network's weights and the ``nowcast`` section only, with a record of the hardware and
the wall time it trained for, no optimizer state.

Then ``--report`` verifies every shipped model and the baselines on the test events with
``nowcast evaluate`` (4 input frames, 12 x 5 min leads, every 3rd init time) and writes
``docs/skill.md`` and ``nowcast/weights/MODEL_CARD.md`` from the reports.

    python -m nowcast.shipping [--data ../shared/data] [--only convlstm_flow ...] [--skip-train] [--report]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nowcast.forecaster import SHIPPED, WEIGHTS_DIR

STORE_DIR = Path("data/weights")
CONFIG_DIR = Path("configs/weights")
#: (store, product, format, folders under the data root): which event went where
EVENTS = (
    ("train", "fmi", "fmi_pgm", ("radar/fmi/pgm/20170509",)),
    ("train", "mch", "mch_gif", ("radar/mch/20150515", "radar/mch/20170131")),
    ("train", "knmi", "knmi_hdf5", ("radar/KNMI/2010/08",)),
    ("test", "fmi", "fmi_pgm", ("radar/fmi/pgm/20160928",)),
    ("test", "mch", "mch_gif", ("radar/mch/20160711",)),
)


def ingest_events(data_root: Path) -> None:
    for store, product, fmt, folders in EVENTS:
        paths = [str(data_root / f) for f in folders]
        missing = [p for p in paths if not Path(p).is_dir()]
        if missing:
            raise FileNotFoundError(f"radar folder(s) not found: {', '.join(missing)} (pass --data)")
        subprocess.run([sys.executable, "-m", "nowcast_cli", "ingest", "--format", fmt, "--store",
                        str(STORE_DIR / f"{store}.zarr"), "--product", product, *paths], check=True)


def stages(name: str) -> list[str]:
    """A model's training stages, in order: ``<name>.yaml``, then ``<name>.tune.yaml`` when there
    is one (fine-tuning from the first stage's best checkpoint). Each stage runs in its own
    ``runs/weights/<stage>`` directory; the last one is what ships."""
    tune = CONFIG_DIR / f"{name}.tune.yaml"
    return [name, f"{name}.tune"] if tune.is_file() else [name]


#: the GPU overlay (``--gpu``): bf16-mixed and no epoch cap, so each stage's max_time is its budget
GPU_OVERLAY = Path("configs/gpu.yaml")
#: how the GPU-trained weights were made (one H100, the six models at once; docs/skill.md)
GPU_COMMAND = "python -m nowcast.shipping --gpu --jobs 6 --max-time 00:00:06:00,00:00:08:00"


def train(name: str, run_dir: Path = Path("runs/weights"), overrides: dict[str, list[str]] | None = None) -> None:
    """Every stage of ``name`` in order; ``overrides`` maps "first"/"tune" to extra LightningCLI arguments."""
    for i, stage in enumerate(stages(name)):
        train_stage(stage, run_dir, (overrides or {}).get("tune" if i else "first", []))


def train_stage(name: str, run_dir: Path = Path("runs/weights"), extra: list[str] | None = None) -> None:
    """Train (or resume) one stage; its wall time, summed over resumed runs, and the device it ran on
    go to wall_time.json (the export may run on another machine)."""
    import json
    import time

    config = CONFIG_DIR / f"{name}.yaml"
    ledger = run_dir / name / "wall_time.json"
    spent = json.loads(ledger.read_text())["seconds"] if ledger.is_file() else (_logged_seconds(run_dir / name) or 0.0)
    started = time.perf_counter()
    # the stage's own run directory holds its lock: two runs of one stage collide, other stages run beside it
    subprocess.run([sys.executable, "-m", "nowcast_cli", "train", "--config", str(config), "--registry",
                    str(run_dir / name), *(extra or [])], check=True)
    ledger.write_text(json.dumps({"seconds": spent + time.perf_counter() - started, "device": device_name()}))


def _config(stage: str) -> dict[str, Any]:
    """A stage's training config (``configs/weights/<stage>.yaml``) as a dict."""
    import yaml

    return yaml.safe_load((CONFIG_DIR / f"{stage}.yaml").read_text())


def is_hybrid(name: str) -> bool:
    """Whether a model's first stage reads a cached extrapolation (``data.motion``)."""
    return bool(_config(name)["data"].get("motion"))


def build_extrapolation_caches(names: list[str], workers: int) -> None:
    """The hybrids' extrapolation caches, built once with ``workers`` processes before their runs
    start (a run would otherwise build its own with the loader's few workers), for exactly the init
    times their training and validation windows read."""
    from pipelines.datamodule import RadarDataModule

    for name in names:
        RadarDataModule(**{**_config(name)["data"], "num_workers": workers}).setup("fit")


def train_all(names: list[str], run_dir: Path, overrides: dict[str, list[str]], jobs: int) -> None:
    """Train ``names``, ``jobs`` models at a time (small recurrent nets leave a GPU mostly idle, so
    several share one). The plain networks start at once; the hybrids once their caches exist."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    hybrids = [n for n in names if is_hybrid(n)]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(train, n, run_dir, overrides) for n in names if n not in hybrids]
        if hybrids:
            build_extrapolation_caches(hybrids, workers=max(1, (os.cpu_count() or 2) - 2 * len(futures)))
        futures += [pool.submit(train, n, run_dir, overrides) for n in hybrids]
        for future in futures:
            future.result()


def _logged_seconds(run: Path) -> float | None:
    """Wall time from the run's own files: first hparams.yaml written to last metrics.csv written."""
    starts = [p.stat().st_mtime for p in run.glob("logs/*/hparams.yaml")]
    ends = [p.stat().st_mtime for p in run.glob("logs/*/metrics.csv")]
    return max(ends) - min(starts) if starts and ends else None


def _logged_steps(run: Path) -> tuple[int, int]:
    """(epochs, optimizer steps) as the CSV logs saw them (the last checkpoint may lag the stop)."""
    import csv

    epochs = steps = 0
    for log in run.glob("logs/*/metrics.csv"):
        with log.open() as f:
            for row in csv.DictReader(f):
                epochs, steps = max(epochs, int(row["epoch"]) + 1), max(steps, int(row["step"]) + 1)
    return epochs, steps


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _stage_record(stage: str, run_dir: Path) -> dict[str, Any]:
    import json

    checkpoints = run_dir / stage / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    ledger = run_dir / stage / "wall_time.json"
    kept = json.loads(ledger.read_text()) if ledger.is_file() else {}
    wall = kept["seconds"] if kept else _logged_seconds(run_dir / stage)
    epochs, steps = _logged_steps(run_dir / stage)
    record = {"config": f"{CONFIG_DIR}/{stage}.yaml", "wall_time_s": None if wall is None else round(wall, 1),
              "trained_on": kept.get("device") or device_name(),
              "epochs": max(epochs, int(last["epoch"]) + 1), "steps": max(steps, int(last["global_step"]))}
    # what a person wrote into the ledger about the run (e.g. that it was cut off before its budget)
    return dict(record, note=kept["note"]) if kept.get("note") else record


def _monitor(stage: str) -> str | None:
    """The metric a stage's config chooses its best checkpoint on (its ModelCheckpoint's monitor);
    None for a fixed-budget stage, whose only ModelCheckpoint keeps the last epoch."""
    checkpoints = [c.get("init_args", {}) for c in _config(stage).get("trainer", {}).get("callbacks", [])
                   if c.get("class_path", "").endswith("ModelCheckpoint")]
    monitors = [c["monitor"] for c in checkpoints if c.get("monitor")]
    if monitors:
        return monitors[0]
    return None if checkpoints else "val/csi_1mm/lead_030min"


def _validation_scores(run: Path, epoch: int, step: int | None = None) -> dict[str, float]:
    """What the CSV logs hold for the validation at the end of ``epoch`` (or, for runs that validate
    several times an epoch, at optimizer step ``step``), with the CSI averaged over the leads added
    for runs that logged only the per-lead scores."""
    import csv

    scores: dict[str, float] = {}
    for log in sorted(run.glob("logs/*/metrics.csv")):
        with log.open() as f:
            for row in csv.DictReader(f):
                # logged a step or two before the checkpoint's global_step: the last validation up to it
                at = row.get("epoch") == str(epoch) if step is None else 0 <= step - int(row.get("step") or -9) <= 3
                if at and row.get("val/csi_1mm/lead_030min"):
                    scores = {k: float(v) for k, v in row.items() if k.startswith("val/") and v}
    for threshold in ("1", "5"):
        leads = [v for k, v in scores.items() if k.startswith(f"val/csi_{threshold}mm/lead_")]
        if leads and f"val/csi_{threshold}mm/mean" not in scores:
            scores[f"val/csi_{threshold}mm/mean"] = sum(leads) / len(leads)
    # the light-and-heavy CSI (training.py logs it since 2026-12-07): added for older runs so a
    # fine-tuning stage chosen on it compares with the stage it started from on the same number
    for key, light in list(scores.items()):
        if key.startswith("val/csi_1mm/lead_"):
            heavy = scores.get(key.replace("csi_1mm", "csi_5mm"))
            if heavy is not None:
                scores.setdefault(key.replace("csi_1mm", "csi_1_5mm"), (light + heavy) / 2)
    return scores


def _best_stage(name: str, run_dir: Path) -> tuple[str, dict[str, Any], dict[str, float]]:
    """The stage whose best checkpoint scores highest on the last stage's monitor: a fine-tuning
    stage ships only if it beat the stage it started from, on the metric it was chosen by.

    A last stage with no monitor is a fixed budget whose last epoch ships: its config says why its
    validation set cannot choose (``configs/weights/convlstm.tune.yaml``)."""
    runs = stages(name)
    monitor = _monitor(runs[-1])
    if monitor is None:
        source = run_dir / runs[-1] / "checkpoints" / "last.ckpt"
        if not source.is_file():
            raise FileNotFoundError(f"no checkpoint for {name} under {run_dir}: train it first")
        checkpoint = torch.load(source, map_location="cpu", weights_only=False)
        scores = _validation_scores(run_dir / runs[-1], int(checkpoint["epoch"]))
        return runs[-1], checkpoint, dict(scores, monitor="last epoch of a fixed budget")
    candidates = []
    for stage in runs:
        checkpoints = run_dir / stage / "checkpoints"
        source = checkpoints / "best.ckpt" if (checkpoints / "best.ckpt").is_file() else checkpoints / "last.ckpt"
        if not source.is_file():
            continue
        checkpoint = torch.load(source, map_location="cpu", weights_only=False)
        scores = (_validation_scores(run_dir / stage, int(checkpoint["epoch"]), int(checkpoint["global_step"]))
                  or _validation_scores(run_dir / stage, int(checkpoint["epoch"])))
        candidates.append((scores.get(monitor, float("-inf")), stage, checkpoint, scores))
    if not candidates:
        raise FileNotFoundError(f"no checkpoint for {name} under {run_dir}: train it first")
    _, stage, checkpoint, scores = max(candidates, key=lambda c: c[0])  # ties: the earlier stage
    return stage, checkpoint, dict(scores, monitor=monitor)


def export(name: str, run_dir: Path = Path("runs/weights")) -> dict[str, Any]:
    """The best checkpoint of ``name``'s stages (``_best_stage``) -> ``nowcast/weights/<name>.ckpt``
    (weights + nowcast section), with what every stage cost and its validation scores."""
    runs = stages(name)
    stage, best, scores = _best_stage(name, run_dir)
    records = [_stage_record(s, run_dir) for s in runs]
    walls = [r["wall_time_s"] for r in records]
    record = {
        "trained_on": " + ".join(dict.fromkeys(r["trained_on"] for r in records)),
        # the whole `nowcast train` of every stage, set-up included
        "wall_time_s": None if None in walls else round(sum(walls), 1),
        "epochs": sum(r["epochs"] for r in records),
        "steps": sum(r["steps"] for r in records),
        "best_epoch": int(best["epoch"]),
        "val_csi_1mm_30min": _rounded(scores.get("val/csi_1mm/lead_030min")),
        "val_csi_1mm_60min": _rounded(scores.get("val/csi_1mm/lead_060min")),
        "val_csi_1mm_mean": _rounded(scores.get("val/csi_1mm/mean")),
        "val_csi_5mm_30min": _rounded(scores.get("val/csi_5mm/lead_030min")),
        "selected_on": scores["monitor"],
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": f"{CONFIG_DIR}/{stage}.yaml",
    }
    if len(records) > 1:
        record["stages"] = records
    notes = [r["note"] for r in records if r.get("note")]
    if notes:  # what a person wrote into a run's ledger (e.g. that it shared the machine)
        record["note"] = "; ".join(notes)
    info = _with_postprocessing(dict(best["nowcast"], training=record), stage)
    state = {k: v for k, v in best["state_dict"].items() if k.startswith("net.")}
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    _save_shipped(name, {"state_dict": state, "nowcast": info})
    return record


def _save_shipped(name: str, checkpoint: dict[str, Any]) -> None:
    target = WEIGHTS_DIR / f"{name}.ckpt"
    tmp = target.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(target)


def probability_matching(stage: str) -> str:
    """How a stage's forecasts are post-processed (its config's ``model.probability_matching``):
    chosen on the validation day after training (``bench/probability_matching.py``)."""
    return (_config(stage).get("model") or {}).get("probability_matching", "none")


#: model arguments a config may set after training, chosen on validation; they change no weight
CHOSEN_AFTER_TRAINING = ("level",)


def chosen_after_training(stage: str) -> dict[str, Any]:
    """The model arguments of ``CHOSEN_AFTER_TRAINING`` a stage's config sets (an exceedance network's
    ``level``): the checkpoints saved while training predate the choice, the shipped weights carry it."""
    kwargs = (_config(stage).get("model") or {}).get("model_kwargs") or {}
    return {key: kwargs[key] for key in CHOSEN_AFTER_TRAINING if key in kwargs}


def update_postprocessing(name: str) -> str:
    """Write the post-processing of the shipped stage's config (probability matching, the arguments
    chosen after training) into ``name``'s shipped weights, without re-exporting them (the choice is
    made after training, and the runs may be gone)."""
    path = WEIGHTS_DIR / f"{name}.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    stage = Path(checkpoint["nowcast"]["training"]["config"]).stem
    checkpoint["nowcast"] = _with_postprocessing(checkpoint["nowcast"], stage)
    _save_shipped(name, checkpoint)
    return checkpoint["nowcast"]["probability_matching"]


def _with_postprocessing(info: dict[str, Any], stage: str) -> dict[str, Any]:
    """``info`` (a checkpoint's nowcast section) with what ``stage``'s config chose after training."""
    return dict(info, probability_matching=probability_matching(stage),
                model_kwargs={**info["model_kwargs"], **chosen_after_training(stage)})


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


BASELINE_NAMES = ("persistence", "optical_flow", "optical_flow_smooth", "sprog")
TEST_EVENTS = {"fmi": "FMI 2016-09-28", "mch": "MeteoSwiss 2016-07-11"}
SKILL_DIR = Path("data/weights/skill")


def verify_test_events(models: list[str]) -> dict[str, dict]:
    """``nowcast evaluate`` on each test event; returns the reports by product."""
    from nowcast.evaluate import evaluate

    reports = {}
    for product in TEST_EVENTS:
        out = SKILL_DIR / f"{product}.json"
        reports[product] = evaluate(str(STORE_DIR / "test.zarr"), product, [*BASELINE_NAMES, *models], out,
                                    stride=3, lead_steps=12)
        print(f"verified {product}: {reports[product]['n_cases']} cases", flush=True)
    return reports


def _lead(scores: list[dict], minutes: float) -> dict:
    return next(row for row in scores if abs(row["lead_minutes"] - minutes) < 1e-6)


def skill_rows(report: dict) -> list[tuple[str, list[float | None]]]:
    """Per model: CSI 1 mm/h 30/60 min, CSI 5 mm/h 30 min, CSI 10 mm/h 30 min, FSS 60 min."""
    rows = []
    for label, entry in report["models"].items():
        s30, s60 = _lead(entry["scores"], 30), _lead(entry["scores"], 60)
        rows.append((label, [s30["csi"]["1.0"], s60["csi"]["1.0"], s30["csi"]["5.0"], s30["csi"]["10.0"],
                             s60["fss_1mm_10km"]]))
    return rows


SKILL_HEADER = ("| model | CSI 1 mm/h 30 min | CSI 1 mm/h 60 min | CSI 5 mm/h 30 min | CSI 10 mm/h 30 min "
                "| FSS 1 mm/h 10 km 60 min |\n|---|---|---|---|---|---|\n")


def skill_table(report: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return SKILL_HEADER + "".join(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |\n"
                                  for label, values in skill_rows(report))


def card_head(name: str, path: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A shipped model's ``nowcast`` section, its training record, and the model card's first lines
    about it (network, config, what trained it and for how long)."""
    info = torch.load(path, map_location="cpu", weights_only=False)["nowcast"]
    record = info.get("training", {})
    kwargs = {k: v for k, v in info["model_kwargs"].items() if k != "normalization"}
    return info, record, [
        f"### `{name}`", "",
        f"- network: `{info['model']}` {kwargs}; file {path.stat().st_size / 1e6:.1f} MB",
        f"- config: `{record.get('config')}`",
        f"- trained on: {record.get('trained_on')}, wall time {record.get('wall_time_s')} s, "
        f"{record.get('epochs')} epochs / {record.get('steps')} steps (shipped epoch {record.get('best_epoch')})"
        + (f"; {record['note']}" if record.get("note") else "")]


def outputs_line(info: dict[str, Any]) -> list[str]:
    """A probabilistic network's outputs (nowcast/models/exceedance.py) for its card: none for the others."""
    thresholds = info["model_kwargs"].get("thresholds")
    if not thresholds:
        return []
    from nowcast.models import model_class

    level = info["model_kwargs"].get("level")
    field = getattr(model_class(info["model"]), "DETERMINISTIC_FIELD", None) or (
        "the mean of the normalised rate" if level is None else f"the rate exceeded with probability {level}")
    return [f"- outputs: probability, P(rate >= t) at any t from its heads at {thresholds} mm/h; deterministic, "
            + field + "; verified against `steps` in docs/skill.md"]


def card_lines(name: str, path: Path, reports: dict[str, dict]) -> list[str]:
    """One 1 km model's card section: what it is, what trained it, its validation and test scores."""
    info, record, head = card_head(name, path)
    lines = [*head,
             f"- validation CSI at 1 mm/h, 30/60 min {record.get('val_csi_1mm_30min')}/"
             f"{record.get('val_csi_1mm_60min')}, mean over the leads {record.get('val_csi_1mm_mean')}; "
             f"CSI 5 mm/h 30 min {record.get('val_csi_5mm_30min')} (chosen on `{record.get('selected_on')}`)"]
    for stage in record.get("stages", []):
        lines.append(f"  - stage `{stage['config']}`: {stage['wall_time_s']} s, {stage['epochs']} epochs / "
                     f"{stage['steps']} steps" + (f" ({stage['note']})" if stage.get("note") else ""))
    matching = info.get("probability_matching", "none")
    how = {"cdf": "each lead's distribution matched to the last observed frame's, chosen on the validation day",
           "cdf_wet": "the intensities inside each lead's 1 mm/h area matched to the last observed frame's, the "
                      "area kept, chosen on validation data"}
    lines.append(f"- post-processing: probability matching `{matching}`"
                 + (f" ({how[matching]} with `bench/probability_matching.py`)" if matching in how else ""))
    lines += outputs_line(info)
    for product, report in reports.items():
        row = dict(skill_rows(report)).get(name)
        if row:
            lines.append(f"- test, {TEST_EVENTS[product]}: CSI 1 mm/h 30/60 min {row[0]:.3f}/{row[1]:.3f}, "
                         f"CSI 5 mm/h 30 min {row[2]:.3f}, FSS 60 min {row[4]:.3f}")
    return [*lines, ""]


def model_card(reports: dict[str, dict]) -> str:
    lines = ["# Shipped models", "",
             "Rebuilt by `make weights` (`python -m nowcast.shipping`) on a CPU, or on a GPU by",
             f"`{GPU_COMMAND}`; each model below says which trained it. Every figure below is read off the",
             "checkpoints and the verification reports that command writes.", "",
             "## Data each model saw", "",
             "All shipped models saw the same windows, in mm/h (log-normalised), 4 input frames, 12 x 5 min leads:",
             "",
             "- training: FMI 2017-05-09 (40 frames), MeteoSwiss AQC 2017-01-31 (40), KNMI 2010-08-26 (92);",
             "  random 128 x 128 crops with at least 10 % rain, rotations and flips; the fine-tuning stages of",
             "  `convlstm` and `sa_convlstm` also draw half their windows as advected windows (one real frame",
             "  carried at a random constant speed, `data.advect_prob`); the hybrids' windows carry the cached",
             "  forecast they correct: optical flow for the `*_flow` models, S-PROG for `convlstm_sprog`;",
             "- validation (early stopping and checkpoint choice): MeteoSwiss AQC 2015-05-15 (whole day,",
             "  `block_hours: 24`, pattern train/train/val/train), 25 windows of 128 x 128 pixels. Checkpoints are",
             "  chosen on the CSI at 1 mm/h at 30 min, or, for the plain networks' fine-tuning stages, averaged",
             "  over the 12 leads; a fine-tuning stage ships only if it beat its first stage on that score. The",
             "  exceptions are the fine-tuning stages of `convlstm` and `sa_convlstm`, fixed budgets whose last",
             "  epoch ships: on the validation day optical flow is no better than persistence at 60 min, so it",
             "  cannot choose a network that moves rain (their configs and docs/skill.md give the figures);",
             "- test, never seen in training or validation: FMI 2016-09-28 and MeteoSwiss AQC 2016-07-11.",
             "", "## Models", ""]
    for name in SHIPPED:
        path = WEIGHTS_DIR / f"{name}.ckpt"
        if path.is_file():
            lines += card_lines(name, path, reports)
    lines += ["## Limitations", "",
              "- Trained for minutes (on a 2-core CPU, or six at once on one H100), on 14 hours of radar: small",
              "  networks, few steps. The `*_flow` hybrids start from optical flow (their correction is",
              "  zero-initialised) and learn a little on top; the plain networks have not learned motion well",
              "  enough to match optical flow.",
              "  `convlstm_sprog` starts from S-PROG and is level with it: it learned nothing measurable on top,",
              "  and it costs some MAE and over-forecasts heavy rain (frequency bias 1.2-1.4 at 10 mm/h, 30 min,",
              "  against S-PROG's 1.0-1.1); it never exceeds the heaviest observed rain (`ceiling`).",
              "  More events, above all a validation set on which optical flow beats persistence, matter more now",
              "  than more steps (docs/skill.md).",
              "- Trained at 5-minute steps; products at other steps are resampled in time along their motion",
              "  (motion-compensated interpolation), which costs some skill (docs/skill.md measures it).",
              "- Trained on 1 km radar of three providers. On a provider none saw (EUMETNET OPERA, 2 km, 15 min)",
              "  `convlstm_sprog` is level with S-PROG, `predrnn_flow` and `sa_convlstm_flow` beat optical flow",
              "  at 1 mm/h but trail S-PROG, `convlstm_flow` ties optical flow at 30 min; the plain networks",
              "  fall far behind (docs/skill.md).",
              "- SA-ConvLSTM's self-attention is quadratic in the grid: on grids over 128 x 128 pixels it runs in",
              "  overlapping 128-pixel tiles (its training crop size), so it never attends across more than a",
              "  tile.",
              "- Single-channel radar in mm/h; satellite channels do not reach these models.",
              "- Nodata in the inputs is read as dry by the networks; the forecast is nodata wherever the last",
              "  observed frame is.", ""]
    return "\n".join(lines)


def load_reports() -> dict[str, dict]:
    """The reports the last ``--report`` wrote (to rebuild the model card without re-verifying)."""
    import json

    return {p: json.loads((SKILL_DIR / f"{p}.json").read_text()) for p in TEST_EVENTS
            if (SKILL_DIR / f"{p}.json").is_file()}


def merge_reports(fresh: dict[str, dict]) -> dict[str, dict]:
    """Fold the models of ``fresh`` reports into the stored ones (same test events, same
    settings), so one retrained model is re-verified without re-running every other; the
    stored case GIF stays (it shows every model). Writes the merged JSON back."""
    import json

    merged = load_reports()
    for product, report in fresh.items():
        base = merged.get(product)
        if base is None:
            merged[product] = report
            continue
        if (base["n_cases"], base["stride"], base["lead_minutes"]) != (
                report["n_cases"], report["stride"], report["lead_minutes"]):
            raise ValueError(f"{product}: the new report's cases differ from the stored one's: run --report in full")
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        base["models"].update({name: dict(entry, reverified=stamp) for name, entry in report["models"].items()})
        (SKILL_DIR / f"{product}.json").write_text(json.dumps(base, indent=2))
    return merged


def verify_models(models: list[str]) -> dict[str, dict]:
    """Only ``models`` on the test events (no baselines), for ``merge_reports``."""
    from nowcast.evaluate import evaluate

    return {product: evaluate(str(STORE_DIR / "test.zarr"), product, models,
                              SKILL_DIR / "partial" / f"{product}.json", stride=3, lead_steps=12)
            for product in TEST_EVENTS}


def write_reports(models: list[str], merge: bool = False) -> None:
    """Verify and write docs/skill.md and the model card; with ``merge``, verify only ``models``
    and keep the stored scores of the baselines and every other model."""
    reports = merge_reports(verify_models(models)) if merge else verify_test_events(models)
    write_docs(reports, [m for m in SHIPPED if any(m in r["models"] for r in reports.values())])


#: docs/skill.md below this line is written by hand (what the tables mean); regenerating keeps it
NOTES_MARKER = "<!-- notes: written by hand, kept when the tables are regenerated -->"


def write_docs(reports: dict[str, dict], models: list[str]) -> None:
    import shutil

    docs = Path("docs")
    parts = ["# Skill of the shipped models on radar they never saw", "",
             "Test events: " + ", ".join(TEST_EVENTS.values()) + " (no shipped model trained or validated on them;",
             "see nowcast/weights/MODEL_CARD.md). 4 input frames, 12 x 5 min leads, every 3rd init time, full grids,",
             "contingency counts pooled over cases (`nowcast evaluate`). Commands:", "", "```bash",
             "make weights   # ingest, train, export (python -m nowcast.shipping)",
             "python -m nowcast.shipping --skip-ingest --skip-train --report   # this page"]
    for product in TEST_EVENTS:
        parts.append(f"nowcast evaluate --store data/weights/test.zarr --product {product} --stride 3 --lead-steps 12 "
                     + " ".join(f"--model {m}" for m in [*BASELINE_NAMES, *models])
                     + f" --out data/weights/skill/{product}.json")
    parts += ["```", ""]
    later = sorted({f"{m} ({e['reverified']})" for r in reports.values() for m, e in r["models"].items()
                    if "reverified" in e})
    if later:
        parts += ["Re-verified alone after retraining (`--report --merge --only ...`, same cases and settings;",
                  "the other rows are from the last full `--report`): " + ", ".join(later) + ".", ""]
    for product, report in reports.items():
        parts += [f"## {TEST_EVENTS[product]} ({report['n_cases']} cases)", "", skill_table(report)]
        gif = report.get("files", {}).get("case_gif")
        if gif:
            target = docs / f"skill_{product}_case.gif"
            shutil.copyfile(gif, target)
            parts += [f"![wettest case, {TEST_EVENTS[product]}]({target.name})", ""]
    page = docs / "skill.md"
    notes = page.read_text().partition(NOTES_MARKER)[2] if page.is_file() else ""
    page.write_text("\n".join(parts) + "\n" + (NOTES_MARKER + notes if notes else ""))
    card = WEIGHTS_DIR / "MODEL_CARD.md"
    card.write_text(model_card(reports) + _kept_sections(card))
    write_skill_file(reports)


#: sections other commands generate in the model card (``nowcast.shipping_taasrad19``): kept here
OTHER_SECTIONS = "<!-- taasrad19:"


def _kept_sections(path: Path) -> str:
    text = path.read_text() if path.is_file() else ""
    return "\n" + text[text.index(OTHER_SECTIONS):] if OTHER_SECTIONS in text else ""


#: the model card's test scores, machine-readable: what GET /v1/models reports for shipped weights
SKILL_FILE = WEIGHTS_DIR / "skill.json"
SKILL_KEYS = ("csi_1mm_30min", "csi_1mm_60min", "csi_5mm_30min", "csi_10mm_30min", "fss_1mm_10km_60min")


def write_skill_file(reports: dict[str, dict]) -> None:
    import json

    kept = json.loads(SKILL_FILE.read_text())["test_events"] if SKILL_FILE.is_file() else {}
    skill: dict[str, dict] = {name: rows for name, rows in kept.items() if name not in SHIPPED}  # other archives'
    for product, report in reports.items():
        for name, row in skill_rows(report):
            if name in SHIPPED:
                scores = {k: None if v is None else round(float(v), 4) for k, v in zip(SKILL_KEYS, row, strict=True)}
                skill.setdefault(name, {})[TEST_EVENTS[product]] = scores
    SKILL_FILE.write_text(json.dumps({"test_events": skill, "settings": "4 input frames, 12 x 5 min leads, "
                                      "every 3rd init time, full grids (docs/skill.md)"}, indent=2) + "\n")


def stage_overrides(gpu: bool, max_time: str | None) -> dict[str, list[str]]:
    """The extra ``nowcast train`` arguments of first and fine-tuning stages: the GPU overlay and
    the wall-clock budgets (``--max-time 00:00:07:00,00:00:09:00``)."""
    import re

    common = ["--config", str(GPU_OVERLAY)] if gpu else []
    budgets = max_time.split(",") if max_time else []
    if len(budgets) > 2:
        raise ValueError(f"--max-time takes one budget or two (first stage, fine-tuning), got {max_time!r}")
    for budget in budgets:
        if not re.fullmatch(r"\d{2}:\d{2}:\d{2}:\d{2}", budget):
            raise ValueError(f"--max-time budgets are DD:HH:MM:SS (Lightning's max_time), got {budget!r}")
    budgets = budgets + budgets[-1:] if len(budgets) == 1 else budgets
    return {kind: common + (["--trainer.max_time", budgets[i]] if budgets else [])
            for i, kind in enumerate(("first", "tune"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nowcast.shipping", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--only", nargs="*", default=list(SHIPPED), choices=SHIPPED)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="export what the runs have")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--report", action="store_true", help="verify on the test events, write the docs")
    parser.add_argument("--merge", action="store_true",
                        help="with --report: verify only the --only models, keep every other stored score")
    parser.add_argument("--gpu", action="store_true",
                        help=f"train with {GPU_OVERLAY} over each stage's config (bf16-mixed, no epoch cap)")
    parser.add_argument("--max-time", metavar="DD:HH:MM:SS[,DD:HH:MM:SS]",
                        help="every first stage's wall-clock budget[, every fine-tuning stage's]")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once (one process each)")
    parser.add_argument("--update-postprocessing", action="store_true",
                        help="only write each --only model's probability matching from its shipped stage's config "
                             "into its shipped weights (no ingest, training or export)")
    args = parser.parse_args(argv)
    if args.update_postprocessing:
        for name in args.only:
            print(name, "probability matching:", update_postprocessing(name), flush=True)
        return
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        overrides = stage_overrides(args.gpu, args.max_time)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.skip_ingest:
        ingest_events(args.data)
    if not args.skip_train:
        train_all(args.only, Path("runs/weights"), overrides, args.jobs)
    for name in [] if args.skip_export else args.only:
        print(name, export(name), flush=True)
    if args.report:
        from nowcast.forecaster import shipped_models

        write_reports([m for m in shipped_models() if m in args.only], merge=args.merge)


if __name__ == "__main__":
    main()
