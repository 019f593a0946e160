"""The fast path (per-cell torch.compile, fused gates) keeps the eager model's numbers and weights.

On CPU inductor compiles C++: on a cold cache (a fresh machine) the compiled tests take minutes on the
busy 2-core project machine (its first compile also builds headers), on a warm one about half a minute.
Where compiling cannot work (no C++ compiler) these tests fail, saying why: they never skip.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch._inductor.config
from torch._dynamo.utils import counters

from nowcast.models import get_model
from nowcast.models.cells import stlstm_step
from nowcast.models.fast_path import CudaGraphed, set_fast_path
from nowcast.training import NowcastModule

WEIGHTS = Path(__file__).resolve().parents[1] / "nowcast" / "weights"
#: tiny networks whose layers share one shape (frame channels = hidden), so few graphs compile
TINY = {
    "convlstm": {"hidden": (4, 4), "kernel": 3, "patch": 2},
    "predrnn": {"hidden": (4, 4), "kernel": 3, "patch": 2},
    "sa_convlstm": {"hidden": (4,), "kernel": 3, "patch": 2},
}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def run(net: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor, t_out: int
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Forward, a weighted sum as the loss, backward: (output, parameter gradients, input gradient)."""
    x = x.detach().clone().requires_grad_(True)
    out = net(x, t_out)
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad for n, p in net.named_parameters()}, x.grad


@pytest.fixture(scope="module", autouse=True)
def _compiler() -> Iterator[None]:
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.fail("torch.compile on CPU needs a C++ compiler (g++): install it (Debian: apt-get install g++)")
    # compile in this process: on a 2-core machine a pool of compile workers costs more than it saves
    # (cold cache, ConvLSTM + SA-ConvLSTM: 97 s with the pool, 62 s without, on the busy project machine)
    with torch._inductor.config.patch(compile_threads=1):
        yield


# SA-ConvLSTM's step (attention, softmax) is the largest graph: about 2 minutes of C++ compilation on a
# cold cache of the busy 2-core project machine, 5 s on a warm one; `pytest -m 'not slow'` leaves it out
@pytest.mark.parametrize("name", ["convlstm", "predrnn", pytest.param("sa_convlstm", marks=pytest.mark.slow)])
def test_compiled_cells_give_the_eager_outputs_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    eager = get_model(name, **TINY[name]).train()
    fast = set_fast_path(copy.deepcopy(eager), "compile")
    assert fast.state_dict().keys() == eager.state_dict().keys()
    x = torch.rand(2, 3, 1, 8, 8)
    weights = torch.randn(2, 3, 1, 8, 8)
    graphs = counters["stats"]["unique_graphs"]
    ref_out, ref_grads, ref_x = run(eager, x, weights, 3)
    out, grads, x_grad = run(fast, x, weights, 3)
    assert counters["stats"]["unique_graphs"] > graphs, "the fast path did not run compiled"
    assert relative_error(out, ref_out) < 1e-5
    assert relative_error(x_grad, ref_x) < 1e-4
    for key, ref in ref_grads.items():
        assert grads[key] is not None and relative_error(grads[key], ref) < 1e-4, key


@pytest.mark.parametrize("states", ["first step", "m only", "all"])
def test_predrnn_gates_from_one_convolution_equal_the_three(states: str) -> None:
    torch.manual_seed(1)
    hidden, k = 4, 3
    x = torch.randn(2, 5, 6, 6)
    h, c, m = (torch.randn(2, hidden, 6, 6) for _ in range(3))
    if states == "first step":
        h = c = m = None
    elif states == "m only":
        h = c = None
    weights = (torch.randn(7 * hidden, 5, k, k), torch.randn(7 * hidden), torch.randn(4 * hidden, hidden, k, k),
               torch.randn(3 * hidden, hidden, k, k), torch.randn(hidden, 2 * hidden, k, k),
               torch.randn(hidden, 2 * hidden, 1, 1))
    three = stlstm_step(x, h, c, m, *weights, (1, 1), hidden, 1.0, False)
    one = stlstm_step(x, h, c, m, *weights, (1, 1), hidden, 1.0, True)
    for a, b in zip(one, three, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_shipped_checkpoints_load_with_the_fast_path_on() -> None:
    paths = sorted(WEIGHTS.glob("*.ckpt"))
    assert paths, f"no shipped weights in {WEIGHTS}"
    for path in paths:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        info = checkpoint["nowcast"]
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        for mode in ("compile", "auto"):
            model = set_fast_path(get_model(info["model"], **info["model_kwargs"]), mode)
            model.load_state_dict(state)  # strict: the same keys and shapes as the eager model's
            assert model.state_dict().keys() == state.keys(), path.name


def test_auto_is_eager_on_cpu_to_the_bit() -> None:
    torch.manual_seed(2)
    eager = get_model("predrnn", **TINY["predrnn"]).eval()
    auto = set_fast_path(copy.deepcopy(eager), "auto")
    x = torch.rand(1, 3, 1, 8, 8)
    assert not any(cell.compiled_for(x) for cell in auto.cells)
    with torch.no_grad():
        assert torch.equal(auto(x, 2), eager(x, 2))


def test_the_lightning_module_switch() -> None:
    kwargs = {"model": "convlstm", "model_kwargs": dict(TINY["convlstm"]), "t_in": 3, "t_out": 2}
    module = NowcastModule(**kwargs)
    assert module.hparams.fast_path == "eager"  # the default until a GPU measurement says compiling pays
    module = NowcastModule(**kwargs, fast_path="auto")
    assert module.net.encoder[0].fast_path == "auto"
    module = NowcastModule(**kwargs, fast_path="eager")
    assert {cell.fast_path for cell in [*module.net.encoder, *module.net.forecaster]} == {"eager"}
    module = NowcastModule(**kwargs, fast_path="compile")
    assert module.net.forecaster[1].fast_path == "compile"
    assert "fast_path" not in module._model_kwargs()  # not in the checkpoint's model arguments
    with pytest.raises(ValueError, match="fast_path"):
        NowcastModule(**kwargs, fast_path="fast")


def test_cuda_graphs_refuse_cpu_tensors() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        CudaGraphed(lambda t: t * 2, torch.ones(2))
