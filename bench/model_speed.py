"""Training and inference speed of each registered network on one workload (JSON on stdout).

    python bench/model_speed.py [--batch 4 --t-in 10 --t-out 10 --size 64 --patch 4 --hidden 64 --layers 4]

The default workload mirrors OpenSTL's Moving-MNIST setting (10 -> 10 frames, 64 x 64,
patch 4) at a smaller width, so the same command can time OpenSTL's and the PredRNN authors'
implementations side by side. Runs on CUDA when available, else CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from nowcast.models import get_model


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in (("batch", 4), ("t-in", 10), ("t-out", 10), ("size", 64), ("patch", 4), ("hidden", 64),
                          ("layers", 4), ("repeats", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.t_in, 1, args.size, args.size, device=device)
    y = torch.rand(args.batch, args.t_out, 1, args.size, args.size, device=device)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "workload": vars(args), "models": {}}
    for name in ("convlstm", "predrnn", "sa_convlstm"):
        kernel = 5 if name == "predrnn" else 3
        model = get_model(name, hidden=(args.hidden,) * args.layers, kernel=kernel, patch=args.patch).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step(model: torch.nn.Module = model, optimiser: torch.optim.Optimizer = optimiser) -> None:
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x, args.t_out, targets=y, target_truth_prob=0.5), y)
            loss.backward()
            optimiser.step()

        def infer(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                model(x, args.t_out)

        train_s = timed(train_step, args.repeats, device)
        infer_s = timed(infer, args.repeats, device)
        results["models"][name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_step_s": round(train_s, 4),
            "train_samples_per_s": round(args.batch / train_s, 2),
            "inference_samples_per_s": round(args.batch / infer_s, 2),
        }
        print(f"{name}: {results['models'][name]}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
