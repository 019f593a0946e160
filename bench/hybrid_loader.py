"""Does the loader keep up with hybrid training? Windows/s with the cached extrapolation, against
the training step's samples/s, and what computing the extrapolation per window would cost.

    python bench/hybrid_loader.py [--store data/weights/train.zarr --product knmi]
        [--config configs/weights/convlstm_flow.yaml]

Needs the cache (``make weights`` builds it, or ``pipelines.extrapolation.build_cache``).
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from dataset_throughput import windows_per_second  # a sibling script (one epoch at most: --windows <= len)
from torch.utils.data import DataLoader

from nowcast.losses import mse_mae
from nowcast.models import get_model
from pipelines.dataset import SequenceDataset
from pipelines.extrapolation import HISTORY, cache_path
from pipelines.motion import extrapolate
from pipelines.store import VARIABLE, ProductArchive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="data/weights/train.zarr")
    parser.add_argument("--product", default="knmi")
    parser.add_argument("--config", default="configs/weights/convlstm_flow.yaml")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    data, model_cfg = config["data"], config["model"]
    dataset = SequenceDataset(args.store, args.product, data["t_in"], data["t_out"], crop=data["crop"],
                              min_rain_fraction=data["min_rain_fraction"], augment=True,
                              extrapolation=cache_path(args.store))
    batch_size = data["batch_size"]
    rates = {f"loader_windows_per_s_{w}_workers": round(windows_per_second(dataset, w, args.windows, batch_size), 2)
             for w in (0, 1)}
    net = get_model(model_cfg["model"], **model_cfg["model_kwargs"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batch = next(iter(DataLoader(dataset, batch_size=batch_size)))
    for step in range(args.steps + 1):
        if step == 1:
            started = time.perf_counter()
        prediction = net(batch["inputs"], data["t_out"], targets=batch["targets"], extrapolation=batch["extrapolation"])
        loss = mse_mae(prediction, batch["targets"], batch["target_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_rate = args.steps * batch_size / (time.perf_counter() - started)
    archive = ProductArchive(args.store, args.product)
    with archive.open() as ds:
        frames = ds[VARIABLE].isel(time=slice(10 - HISTORY + 1, 11)).values
    started = time.perf_counter()
    extrapolate(frames, data["t_out"])
    on_the_fly = time.perf_counter() - started
    print(json.dumps({
        "store": args.store, "product": args.product, "config": args.config, "crop": data["crop"],
        "batch_size": batch_size, "threads": torch.get_num_threads(), **rates,
        "train_samples_per_s": round(train_rate, 2),
        "extrapolation_on_the_fly_s_per_window": round(on_the_fly, 2),
        "loader_keeps_up": max(rates.values()) > train_rate,
    }, indent=2))


if __name__ == "__main__":
    main()
