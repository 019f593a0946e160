"""The one timing harness for our models (bench/models.py) and the public implementations (bench/peers.py).

Both time exactly the same thing on the same workload, so their ratio means something:

- a training step is forward (the model feeds back its own predictions: no teacher forcing), MSE
  against the targets, backward and an Adam step; ``WARMUP`` steps first, then the median of
  ``repeats`` (at least 10);
- inference is one forward under ``torch.inference_mode``, at batch 1 and at the workload's batch.

Inputs are float32 in [0, 1]; ``precision="bf16"`` runs forward and loss under autocast to
bfloat16 (CPU or CUDA). CPU runs use ``threads`` intra-op threads (2: this project's machines).

``cuda_graph=True`` (CUDA only) captures the whole training step (forward, loss, backward, a
capturable Adam step) and each inference forward in a CUDA graph and times their replays
(``nowcast.models.fast_path.CudaGraphed``; autocast runs without its weight cache there).
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
    # a few milliseconds a step on a CPU: proves a bench path runs, times nothing
    "tiny": Workload("tiny", t_in=3, t_out=4, size=16, batch=2, layers=2, hidden=8),
}

#: forward(inputs [B, T_in, C, H, W], targets [B, T_out, C, H, W]) -> predictions [B, T_out, C, H, W]
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def common_arguments(parser: Any, models: list[str], many: bool = False) -> None:
    """The options every bench command shares (the contract of bench/models.py); ``many``: model,
    workload and precision each take several values (one measurement per combination)."""
    several = {"nargs": "+"} if many else {}
    parser.add_argument("--model", required=True, choices=models, **several)
    parser.add_argument("--workload", required=not many, choices=sorted(WORKLOADS), **several)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=["32"] if many else "32", choices=["32", "bf16"], **several)
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


def autocast_for(device: torch.device, precision: str, cache: bool = True) -> Any:
    """``cache=False`` inside CUDA graphs: autocast's cast-weight cache cannot live across a capture."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    if precision != "32":
        raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, enabled=False)


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = WARMUP) -> float:
    for _ in range(warmup):
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
            precision: str = "32", repeats: int = 10, cuda_graph: bool = False,
            infer_batches: tuple[int, ...] | None = None, batch: int | None = None) -> dict[str, Any]:
    """Median training step and inference times of ``forward`` (which wraps ``module``).

    ``infer_batches``: the inference batches timed (default: 1 and the workload's; () for none);
    ``batch``: the training batch (default: the workload's). ``loss_at_step`` is the loss of the
    training step number WARMUP + repeats, the same step for every variant of one model: fast paths
    that keep the numbers land on about the same value."""
    module.to(device).train()
    if cuda_graph and device.type != "cuda":
        raise ValueError("--cuda-graph needs --device cuda")
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-4, **({"capturable": True} if cuda_graph else {}))
    b_train = batch or workload.batch
    x, y = batch_for(workload, device, b_train)
    losses: list[torch.Tensor | None] = []

    def loss_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_for(device, precision, cache=not cuda_graph):
            loss = torch.nn.functional.mse_loss(forward(x, y).float(), y)
        loss.backward()
        optimiser.step()
        return loss

    if cuda_graph:
        from nowcast.models.fast_path import CudaGraphed

        def zero() -> None:
            optimiser.zero_grad(set_to_none=True)

        graphed = CudaGraphed(loss_step, x, y, warmup=WARMUP, prepare=zero)
        losses += [None] * WARMUP  # the capture's warm-up steps ran (their losses are not kept)

        def train_step() -> None:
            losses.append(graphed(x, y).detach().clone())
    else:
        def train_step() -> None:
            optimiser.zero_grad(set_to_none=True)
            losses.append(loss_step(x, y).detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_ms = median_ms(train_step, device, repeats, warmup=1 if cuda_graph else WARMUP)
    step = WARMUP + max(repeats, 1)
    loss_at_step = float(losses[step - 1]) if len(losses) >= step else None
    module.eval()
    infer = {}
    for b in (1, workload.batch) if infer_batches is None else infer_batches:
        xb, yb = batch_for(workload, device, b)

        def infer_call(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast_for(device, precision, cache=not cuda_graph):
                return forward(xb, yb)

        if cuda_graph:
            replay = CudaGraphed(infer_call, xb, yb, warmup=WARMUP)

            def infer_step(xb: torch.Tensor = xb, yb: torch.Tensor = yb, replay: CudaGraphed = replay) -> None:
                replay(xb, yb)
        else:
            def infer_step(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> None:
                infer_call(xb, yb)

        infer[f"batch_{b}"] = round(median_ms(infer_step, device, repeats), 2)
    result = {
        "workload": workload.name,
        "device": device.type,
        "precision": precision,
        "params": sum(p.numel() for p in module.parameters()),
        "batch": b_train,
        "train_ms_per_step": round(train_ms, 2),
        "train_samples_per_s": round(b_train / (train_ms / 1000), 3),
        "loss_at_step": {"step": step, "loss": loss_at_step},
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
        # float32 convolutions run in TF32 where cuDNN allows it (PyTorch's default): rounding at about 1e-3
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


def workload_dict(workload: Workload) -> dict[str, Any]:
    return asdict(workload)
