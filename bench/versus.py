"""Our network against a public implementation, training steps interleaved in one process.

    python bench/versus.py --model predrnn --impl predrnn_pytorch --workload W1 [--rounds 6] [--steps 2]

On a shared machine the speed drifts by 10-20 % over minutes, which swamps a few-percent
difference between two runs made one after the other. Here both models are built in the same
process and timed in alternating rounds (``--steps`` training steps of ours, then of theirs,
``--rounds`` times, after warm-ups), so drift hits both alike; the JSON gives each one's median
step and the median of the per-round ratios (theirs / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from harness import WARMUP, WORKLOADS, autocast_for, batch_for, environment, set_threads, sync, workload_dict
from models import build, recurrent_steps
from peers import BUILDERS, REPOS, THIRD_PARTY


def trainer(module: torch.nn.Module, forward, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            precision: str):
    module.to(device).train()
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            loss = F.mse_loss(forward(x, y).float(), y)
        loss.backward()
        optimiser.step()
        sync(device)
        return (time.perf_counter() - start) * 1000

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=["convlstm", "predrnn", "sa_convlstm"])
    parser.add_argument("--impl", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="training steps per model per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sa-mode", default="sequences", choices=["autoregressive", "sequences"])
    args = parser.parse_args()
    device = torch.device(args.device)
    set_threads(device, args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS[args.workload]
    x, y = batch_for(workload, device)
    ours = build(args.model, workload)
    build_peer, _ = BUILDERS[args.impl]
    peer = build_peer(THIRD_PARTY / REPOS[args.impl][1], args.model, workload, device, False, args.sa_mode)
    step_ours = trainer(ours, lambda a, _b: ours(a, workload.t_out), x, y, device, args.precision)
    step_theirs = trainer(peer.module, peer.forward, x, y, device, args.precision)
    for _ in range(WARMUP):
        step_ours()
        step_theirs()
    times_ours, times_theirs, ratios = [], [], []
    for _ in range(args.rounds):
        a = [step_ours() for _ in range(args.steps)]
        b = [step_theirs() for _ in range(args.steps)]
        times_ours += a
        times_theirs += b
        ratios.append(statistics.median(b) / statistics.median(a))
    ours_ms, theirs_ms = statistics.median(times_ours), statistics.median(times_theirs)
    steps_ours = recurrent_steps(args.model, workload)
    print(json.dumps({
        "model": args.model, "workload": args.workload, "device": args.device, "precision": args.precision,
        "peer": args.impl, "ours_train_ms_per_step": round(ours_ms, 1), "theirs_train_ms_per_step": round(theirs_ms, 1),
        "theirs_over_ours": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "recurrent_steps": {"ours": steps_ours, "theirs": peer.recurrent_steps},
        "theirs_over_ours_per_recurrent_step": round(
            (theirs_ms / peer.recurrent_steps) / (ours_ms / steps_ours), 3),
        "params": {"ours": sum(p.numel() for p in ours.parameters()),
                   "theirs": sum(p.numel() for p in peer.module.parameters())},
        "workload_spec": workload_dict(workload), "environment": environment(device),
    }))


if __name__ == "__main__":
    main()
