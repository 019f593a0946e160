"""Training-step and inference speed of one of our networks on a named workload (one JSON object).

    python bench/models.py --model NAME --workload W1|W2 [--device cpu|cuda] [--precision 32|bf16]
        [--compile none|default|reduce-overhead|max-autotune]

This command line is a contract. Workloads and what a step is: ``bench/harness.py``; the
public implementations run through the same harness in ``bench/peers.py``.
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import WORKLOADS, Workload, common_arguments, environment, measure, set_threads, workload_dict

from nowcast.models import BASELINES, MODELS, get_model, model_class

#: our networks a bench runs (the hybrids' extra input is the extrapolation, timed elsewhere)
NETWORKS = sorted(n for n in MODELS if n not in BASELINES and not model_class(n).motion)


def build(name: str, workload) -> torch.nn.Module:
    return get_model(name, in_channels=workload.channels, hidden=(workload.hidden,) * workload.layers,
                     kernel=workload.kernel, patch=workload.patch)


def recurrent_steps(name: str, workload) -> int:
    """Cell steps one forward runs: the encoder-forecaster ConvLSTM reads T_in and writes T_out frames;
    the frame-feeding models (PredRNN, SA-ConvLSTM) step T_in + T_out - 1 times."""
    return workload.t_in + workload.t_out - (0 if name == "convlstm" else 1)


def prepare(args: argparse.Namespace) -> tuple[torch.device, Workload, torch.nn.Module]:
    """Device (with its threads), workload and a seeded model from the common options."""
    device = torch.device(args.device)
    set_threads(device, args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS[args.workload]
    return device, workload, build(args.model, workload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, NETWORKS)
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the network in this mode (reduce-overhead: CUDA graphs of the unroll); "
                             "compilation happens in the warm-ups, outside the timed steps")
    args = parser.parse_args()
    device, workload, model = prepare(args)
    network = model if args.compile == "none" else torch.compile(model, mode=args.compile)
    result = measure(model, lambda x, _y: network(x, workload.t_out), workload, device, args.precision, args.repeats)
    print(json.dumps({"model": args.model, "implementation": "nowcast", "compile": args.compile, **result,
                      "recurrent_steps": recurrent_steps(args.model, workload),
                      "workload_spec": workload_dict(workload), "environment": environment(device)}))


if __name__ == "__main__":
    main()
