"""The fast path of the recurrent unroll: per-cell ``torch.compile`` and fused gate convolutions.

A recurrent step is a few hundred small kernels on a GPU (docs/performance.md): the convolutions, and
around them a dozen elementwise kernels per cell (split, sigmoid, tanh, mul, add), forward and backward.
The fast path compiles *one cell step* (``torch.compile(..., dynamic=False)``): the same small graph runs
at every step, so it compiles once per cell shape (a handful of graphs) instead of unrolling the whole
sequence into one graph, which did not finish compiling in 170 s. Inductor fuses each cell's gate
arithmetic into one elementwise kernel (and one in the backward). PredRNN's cell also computes its gates
with one convolution over ``[x, h, m]`` instead of three (``fuse_convs``; its weight is assembled from the
three convolutions' parameters, so the parameters, their names and the checkpoints stay the same).

Modes (``NowcastModule(fast_path=...)``, ``model.fast_path`` in a training config):

- ``eager``: the cells as written, op for op;
- ``compile``: the compiled cell step on any device (on a CPU inductor needs a C++ compiler, and the
  first call of each graph costs seconds of compilation);
- ``auto``: ``compile`` for CUDA tensors, ``eager`` elsewhere (decided per call, from the input's device).

The numbers are the eager model's within float32 rounding (``tests/test_fast_path.py``). A bare network from
``get_model`` runs eager; ``set_fast_path`` switches it.

``CudaGraphed`` replays a fixed-shape call (a whole training step, or an inference forward) from a CUDA
graph: the bench uses it (``bench/models.py --cuda-graph``); it needs CUDA and static shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

FAST_PATHS = ("auto", "compile", "eager")
#: compiled graphs allowed per cell function: a cell compiles per input shape, grad mode, autocast state
#: and None-ness of its states (about 5 per model and batch size); dynamo's default of 8 would fall back
#: to eager silently after a few batch sizes
RECOMPILE_LIMIT = 64

_COMPILED: dict[Callable, Callable] = {}


def check_fast_path(mode: str) -> str:
    if mode not in FAST_PATHS:
        raise ValueError(f"fast_path must be one of {', '.join(map(repr, FAST_PATHS))}, got {mode!r}")
    return mode


class FastPathCell(nn.Module):
    """A recurrent cell whose step can run compiled (``set_fast_path``)."""

    fast_path: str = "eager"
    #: PredRNN: one convolution over [x, h, m] for all gates under the compiled path
    fuse_convs: bool = True

    def compiled_for(self, x: Tensor) -> bool:
        """Whether this call runs the compiled step: never inside an outer compile (it is inlined there)."""
        if self.fast_path == "eager" or torch.compiler.is_compiling():
            return False
        return self.fast_path == "compile" or x.device.type == "cuda"


def set_fast_path(module: nn.Module, mode: str, fuse_convs: bool = True) -> nn.Module:
    """Switch every cell of ``module`` to ``mode`` (``FAST_PATHS``); returns ``module``."""
    check_fast_path(mode)
    for cell in module.modules():
        if isinstance(cell, FastPathCell):
            cell.fast_path, cell.fuse_convs = mode, fuse_convs
    module.fast_path = mode  # for whoever reports it (bench); not a parameter, not in the state_dict
    return module


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)``, built once per function and shared by every cell."""
    if fn not in _COMPILED:
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def run_step(cell: FastPathCell, fn: Callable, x: Tensor, *args: Any) -> Any:
    """``fn(x, *args)``, compiled when the cell's fast path says so for this input. The compiled graph is
    specialised to its input's strides: a frame sliced from the sequence ([B, T, ...][:, t]) is made
    contiguous so that it shares one graph with the fed-back predictions and any sequence length."""
    return compiled(fn)(x.contiguous(), *args) if cell.compiled_for(x) else fn(x, *args)


class CudaGraphed:
    """One call of ``fn(*inputs)`` captured in a CUDA graph and replayed on static input buffers.

    ``prepare()`` runs before each warm-up call and before the capture (a training step passes
    ``optimizer.zero_grad(set_to_none=True)``, so the captured backward writes fresh gradients and every
    replay overwrites them). Calls must have the example's shapes and dtypes; the result is the captured
    output, overwritten by the next replay (clone it to keep it). Autocast inside ``fn`` must run with
    ``cache_enabled=False``, and an optimiser stepped inside it must be ``capturable``.
    """

    def __init__(self, fn: Callable[..., Any], *example: Tensor, warmup: int = 3,
                 prepare: Callable[[], None] | None = None):
        if not torch.cuda.is_available() or not example or any(not t.is_cuda for t in example):
            raise ValueError("CUDA graphs need CUDA tensors (static shapes on a GPU); use the eager or compiled path")
        self.static = [t.clone() for t in example]
        prepare = prepare or (lambda: None)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-ups: allocator, cuDNN plans, compiled graphs, outside the capture
            for _ in range(max(warmup, 1)):
                prepare()
                fn(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        prepare()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.static)

    def __call__(self, *inputs: Tensor) -> Any:
        for buffer, value in zip(self.static, inputs, strict=True):
            if buffer.shape != value.shape or buffer.dtype != value.dtype:
                raise ValueError(f"captured for {tuple(buffer.shape)} {buffer.dtype}, got {tuple(value.shape)} "
                                 f"{value.dtype}: capture another graph for another shape")
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        self.graph.replay()
        return self.output
