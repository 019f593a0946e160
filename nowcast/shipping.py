"""``make weights``: rebuild every shipped model from the radar in ../shared/data.

Steps, each resumable: ingest the training and test events into ``data/weights/`` (test
events in a store of their own, so no model can see them), train each model with its
``configs/weights/<name>.yaml`` (checkpointed; an interrupted run continues), then export the
best checkpoint (by validation CSI at 1 mm/h, 30 min) as ``nowcast/weights/<name>.ckpt``:
the network's weights and the ``nowcast`` section only, with a record of the hardware and
the wall time it trained for, no optimizer state.

    python -m nowcast.shipping [--data ../shared/data] [--only convlstm_flow ...] [--skip-train]
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

from nowcast.forecaster import WEIGHTS_DIR

SHIPPED = ("convlstm_flow", "sa_convlstm_flow", "predrnn_flow", "convlstm", "sa_convlstm", "predrnn")
STORE_DIR = Path("data/weights")
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
        subprocess.run([sys.executable, "-m", "nowcast.cli", "ingest", "--format", fmt, "--store",
                        str(STORE_DIR / f"{store}.zarr"), "--product", product, *paths], check=True)


def train(name: str) -> None:
    config = Path("configs/weights") / f"{name}.yaml"
    subprocess.run([sys.executable, "-m", "nowcast.cli", "train", "--config", str(config)], check=True)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def export(name: str, run_dir: Path = Path("runs/weights")) -> dict[str, Any]:
    """Best checkpoint of ``name``'s run -> ``nowcast/weights/<name>.ckpt`` (weights + nowcast section)."""
    checkpoints = run_dir / name / "checkpoints"
    source = checkpoints / "best.ckpt"
    if not source.is_file():
        source = checkpoints / "last.ckpt"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(source, map_location="cpu", weights_only=False)
    timer = last.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
    monitor = next((v for k, v in best.get("callbacks", {}).items() if k.startswith("ModelCheckpoint")), {})
    score = monitor.get("best_model_score")
    record = {
        "trained_on": device_name(),
        "wall_time_s": round(float(timer.get("train", 0.0)) + float(timer.get("validate", 0.0)), 1),
        "epochs": int(last["epoch"]) + 1,
        "steps": int(last["global_step"]),
        "best_epoch": int(best["epoch"]),
        "val_csi_1mm_30min": None if score is None else round(float(score), 4),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": f"configs/weights/{name}.yaml",
    }
    info = dict(best["nowcast"], training=record)
    state = {k: v for k, v in best["state_dict"].items() if k.startswith("net.")}
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    target = WEIGHTS_DIR / f"{name}.ckpt"
    tmp = target.with_suffix(".tmp")
    torch.save({"state_dict": state, "nowcast": info}, tmp)
    tmp.replace(target)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--only", nargs="*", default=list(SHIPPED), choices=SHIPPED)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="export what the runs have")
    args = parser.parse_args(argv)
    if not args.skip_ingest:
        ingest_events(args.data)
    for name in args.only:
        if not args.skip_train:
            train(name)
        print(name, export(name), flush=True)


if __name__ == "__main__":
    main()
