"""The bare convolutions of one training step: the practical speed limit of this machine for a model.

    python bench/convs.py --model NAME --workload W1|W2 [--device cpu|cuda] [--precision 32|bf16] [--step]

One training step of the model (bench/harness.py) is run once with a hook on every Conv2d,
recording each call's input shape, weight shape, padding and whether its input needs a
gradient. The same calls (same count, nothing else) are then replayed as bare ``F.conv2d``
forward + backward, and the median over repeats is printed as JSON. With ``--step`` the model's
own step is timed too, and ``conv_fraction`` says how much of it the convolutions are: the rest
is overhead (gates, copies, allocation, the optimiser) that a faster implementation removes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from harness import autocast_for, batch_for, common_arguments, environment, measure, median_ms
from models import NETWORKS, prepare


@dataclass(frozen=True)
class ConvCall:
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    bias: bool
    padding: tuple[int, int]
    input_grad: bool


def record_calls(model: torch.nn.Module, workload, device: torch.device) -> list[ConvCall]:
    calls: list[ConvCall] = []

    def hook(module: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        calls.append(ConvCall(tuple(inputs[0].shape), tuple(module.weight.shape), module.bias is not None,
                              tuple(module.padding), inputs[0].requires_grad))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    x, y = batch_for(workload, device)
    model.to(device).train()
    loss = F.mse_loss(model(x, workload.t_out), y)  # float32: the shapes are those of any precision
    loss.backward()
    for handle in handles:
        handle.remove()
    return calls


def replay(calls: list[ConvCall], device: torch.device, precision: str, channels_last: bool = False) -> callable:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    layout = torch.channels_last if channels_last else torch.contiguous_format
    tensors = []
    for call in calls:
        x = torch.randn(call.input_shape, device=device, dtype=dtype).to(memory_format=layout)
        x.requires_grad_(call.input_grad)
        w = torch.randn(call.weight_shape, device=device, dtype=dtype).to(memory_format=layout).requires_grad_()
        b = torch.randn(call.weight_shape[0], device=device, dtype=dtype, requires_grad=True) if call.bias else None
        tensors.append((x, w, b, call.padding))

    def run() -> None:
        for x, w, b, padding in tensors:
            out = F.conv2d(x, w, b, padding=padding)
            out.backward(torch.ones_like(out))

    return run


def profile_step(model: torch.nn.Module, workload, device: torch.device, precision: str) -> dict:
    """One real training step (after a warm-up) under torch.profiler: how much of the operators' own
    time is convolution (forward and backward), and the five costliest other operators."""
    from torch.profiler import ProfilerActivity, profile

    x, y = batch_for(workload, device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            loss = F.mse_loss(model(x, workload.t_out).float(), y)
        loss.backward()
        optimiser.step()

    model.to(device).train()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [(e.key, getattr(e, key)) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    conv = sum(t for name, t in events if "conv" in name.lower())
    others = sorted(((t, name) for name, t in events if "conv" not in name.lower()), reverse=True)[:5]
    return {"conv_share": round(conv / total, 3), "total_ms": round(total / 1000, 1),
            "top_other_ops_ms": {name: round(t / 1000, 1) for t, name in others}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, NETWORKS)
    parser.add_argument("--step", action="store_true", help="also time the model's own training step")
    parser.add_argument("--channels-last", action="store_true", help="replay in the channels_last layout")
    parser.add_argument("--limit-calls", type=int, default=None,
                        help="replay only the first N calls (a quick comparison of precisions)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one real training step: the convolutions' share of its operator time")
    args = parser.parse_args()
    device, workload, model = prepare(args)
    calls = record_calls(model, workload, device)[: args.limit_calls]
    conv_ms = median_ms(replay(calls, device, args.precision, args.channels_last), device, args.repeats)
    flops = sum(2 * c.input_shape[0] * c.input_shape[2] * c.input_shape[3] * c.weight_shape[0]
                * c.weight_shape[1] * c.weight_shape[2] * c.weight_shape[3] * (3 if c.input_grad else 2)
                for c in calls)  # forward, weight gradient and (where needed) input gradient
    result = {"model": args.model, "workload": args.workload, "device": args.device, "precision": args.precision,
              "channels_last": args.channels_last, "conv_calls": len(calls), "conv_ms_per_step": round(conv_ms, 2),
              "conv_gflop_per_step": round(flops / 1e9, 2),
              "conv_gflop_per_s": round(flops / 1e9 / (conv_ms / 1000), 1), "environment": environment(device)}
    if args.profile:
        result["profiled"] = profile_step(model, workload, device, args.precision)
    if args.step:
        step = measure(model, lambda x, _y: model(x, workload.t_out), workload, device, args.precision, args.repeats)
        result["train_ms_per_step"] = step["train_ms_per_step"]
        result["conv_fraction"] = round(conv_ms / step["train_ms_per_step"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
