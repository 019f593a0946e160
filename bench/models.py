"""Training-step and inference speed of one of our networks on a named workload (one JSON object).

    python bench/models.py --model NAME --workload W1|W2 [--device cpu|cuda] [--precision 32|bf16]

This command line is a contract. Workloads and what a step is: ``bench/harness.py``; the
public implementations run through the same harness in ``bench/peers.py``.
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import WORKLOADS, environment, measure, set_threads, workload_dict

from nowcast.models import MODELS, get_model


def build(name: str, workload) -> torch.nn.Module:
    return get_model(name, in_channels=workload.channels, hidden=(workload.hidden,) * workload.layers,
                     kernel=workload.kernel, patch=workload.patch)


def recurrent_steps(name: str, workload) -> int:
    """Cell steps one forward runs: the encoder-forecaster ConvLSTM reads T_in and writes T_out frames;
    the frame-feeding models (PredRNN, SA-ConvLSTM) step T_in + T_out - 1 times."""
    return workload.t_in + workload.t_out - (0 if name == "convlstm" else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(n for n in MODELS if not n.endswith("_flow")))
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps after 3 warm-ups (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    set_threads(device, args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS[args.workload]
    model = build(args.model, workload)
    result = measure(model, lambda x, _y: model(x, workload.t_out), workload, device, args.precision, args.repeats)
    print(json.dumps({"model": args.model, "implementation": "nowcast", **result,
                      "recurrent_steps": recurrent_steps(args.model, workload),
                      "workload_spec": workload_dict(workload), "environment": environment(device)}))


if __name__ == "__main__":
    main()
