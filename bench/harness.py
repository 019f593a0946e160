"""The one timing harness for our models (bench/models.py) and the public implementations (bench/peers.py).

Both time exactly the same thing on the same workload, so their ratio means something:

- a training step is forward (the model feeds back its own predictions: no teacher forcing), MSE
  against the targets, backward and an Adam step; ``WARMUP`` steps first, then the median of
  ``repeats`` (at least 10);
- inference is one forward under ``torch.inference_mode``, at batch 1 and at the workload's batch.

Inputs are float32 in [0, 1]; ``precision="bf16"`` runs forward and loss under autocast to
bfloat16 (CPU or CUDA). CPU runs use ``threads`` intra-op threads (2: this project's machines).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

WARMUP = 3


@dataclass(frozen=True)
class Workload:
    """Frames of ``channels`` x ``size`` x ``size``; the model: ``layers`` x ``hidden``, ``kernel``, ``patch``."""

    name: str
    t_in: int
    t_out: int
    size: int
    batch: int
    channels: int = 1
    patch: int = 4
    layers: int = 4
    hidden: int = 64
    kernel: int = 5
    layer_norm: bool = False


WORKLOADS = {
    "W1": Workload("W1", t_in=10, t_out=10, size=64, batch=8),
    "W2": Workload("W2", t_in=12, t_out=12, size=128, batch=4),
    "R256": Workload("R256", t_in=6, t_out=12, size=256, batch=2),  # a radar crop: 30 min in, 1 h out
}

#: forward(inputs [B, T_in, C, H, W], targets [B, T_out, C, H, W]) -> predictions [B, T_out, C, H, W]
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def common_arguments(parser: Any, models: list[str]) -> None:
    """The options every bench command shares (the contract of bench/models.py)."""
    parser.add_argument("--model", required=True, choices=models)
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps after 3 warm-ups (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")


def set_threads(device: torch.device, threads: int) -> None:
    if device.type == "cpu":
        torch.set_num_threads(threads)


def batch_for(workload: Workload, device: torch.device, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b = batch or workload.batch
    shape = (workload.channels, workload.size, workload.size)
    x = torch.rand(b, workload.t_in, *shape, generator=g)
    y = torch.rand(b, workload.t_out, *shape, generator=g)
    return x.to(device), y.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast_for(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "32":
        raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, enabled=False)


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    for _ in range(WARMUP):
        fn()
    sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(module: torch.nn.Module, forward: Forward, workload: Workload, device: torch.device,
            precision: str = "32", repeats: int = 10) -> dict[str, Any]:
    """Median training step and inference times of ``forward`` (which wraps ``module``)."""
    module.to(device).train()
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-4)
    x, y = batch_for(workload, device)

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            loss = torch.nn.functional.mse_loss(forward(x, y).float(), y)
        loss.backward()
        optimiser.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_ms = median_ms(train_step, device, repeats)
    module.eval()
    infer = {}
    for b in (1, workload.batch):
        xb, yb = batch_for(workload, device, b)

        def infer_step(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> None:
            with torch.inference_mode(), autocast_for(device, precision):
                forward(xb, yb)

        infer[f"batch_{b}"] = round(median_ms(infer_step, device, repeats), 2)
    result = {
        "workload": workload.name,
        "device": device.type,
        "precision": precision,
        "params": sum(p.numel() for p in module.parameters()),
        "train_ms_per_step": round(train_ms, 2),
        "train_samples_per_s": round(workload.batch / (train_ms / 1000), 3),
        "infer_ms": infer,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def workload_dict(workload: Workload) -> dict[str, Any]:
    return asdict(workload)
