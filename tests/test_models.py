"""What pins each architecture: shapes, sizes, memory flow, attention reach, and learning."""

from __future__ import annotations

import pytest
import torch
from conftest import sample_files

from nowcast.losses import balance_weights, mse_mae
from nowcast.models import MODELS, MOTION_BASELINES, get_model
from nowcast.models.predrnn import PredRNN
from pipelines.dataset import SequenceDataset
from pipelines.ingest import ingest

DEEP = {
    name: dict(hidden=(8, 8), kernel=3, patch=2)
    for name in ("convlstm", "predrnn", "sa_convlstm", "convlstm_flow", "predrnn_flow", "sa_convlstm_flow")
}


@pytest.mark.parametrize("name", [m for m in MODELS if "sprog" not in m])  # S-PROG's: test_motion, real radar
@pytest.mark.parametrize("t_out", [1, 7])
def test_any_number_of_output_steps_and_channels(name: str, t_out: int) -> None:
    channels = 1 if name in MOTION_BASELINES else 2
    kwargs = {**DEEP.get(name, {}), **({"in_channels": channels} if name in DEEP else {})}
    model = get_model(name, **kwargs)
    out = model(torch.rand(3, 4, channels, 16, 24), t_out)
    assert out.shape == (3, t_out, channels, 16, 24)
    assert torch.isfinite(out).all()


def test_patch_size_must_divide_the_frame() -> None:
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        get_model("convlstm", patch=4)(torch.rand(1, 2, 1, 30, 32), 1)


def _conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_parameter_counts_match_the_papers_equations() -> None:
    # ConvLSTM: per cell one conv [x, h] -> 4 gates; forecaster layer 0 has no input; 1x1 output over all h
    f, h, k = 4, 16, 3  # patch 2 -> 4 frame channels
    expected = (_conv(f + h, 4 * h, k) + _conv(h + h, 4 * h, k)) + (_conv(h, 4 * h, k) + _conv(h + h, 4 * h, k))
    expected += _conv(2 * h, f, 1)
    model = get_model("convlstm", hidden=(h, h), kernel=k, patch=2)
    assert sum(p.numel() for p in model.parameters()) == expected
    # ST-LSTM: x -> 7 gates (bias), h -> 4, m -> 3, o from [c, m], 1x1 over [c, m]; output 1x1 no bias
    def st(c_in: int) -> int:
        return (_conv(c_in, 7 * h, k) + _conv(h, 4 * h, k, False) + _conv(h, 3 * h, k, False)
                + _conv(2 * h, h, k, False) + _conv(2 * h, h, 1, False))
    predrnn = get_model("predrnn", hidden=(h, h, h), kernel=k, patch=2)
    assert sum(p.numel() for p in predrnn.parameters()) == st(f) + 2 * st(h) + _conv(h, f, 1, False)


def test_predrnn_memory_zigzags_and_temporal_memory_stays_in_its_layer() -> None:
    model: PredRNN = get_model("predrnn", hidden=(8, 8, 8), kernel=3, patch=1)
    model.trace = []
    model(torch.rand(2, 3, 1, 12, 12), 2)
    layers = 3
    steps = {(r["t"], r["layer"]): r for r in model.trace}
    assert len(steps) == (3 + 2 - 1) * layers
    for (t, layer), record in steps.items():
        if layer > 0:  # M rises through the layers within a step
            assert record["m_in"] is steps[(t, layer - 1)]["m_out"]
        elif t > 0:  # ... and the top layer's M at t-1 enters the bottom layer at t
            assert record["m_in"] is steps[(t - 1, layers - 1)]["m_out"]
        if t > 0:  # C only flows in time, within its own layer
            assert record["c_in"] is steps[(t - 1, layer)]["c_out"]
            others = [steps[(t - 1, other)]["c_out"] for other in range(layers) if other != layer]
            assert all(record["c_in"] is not c for c in others)


def test_self_attention_reaches_far_pixels_in_one_step_where_convolutions_cannot() -> None:
    """d(output at the far corner) / d(input at the near corner), in float64: a path or none."""
    torch.manual_seed(0)
    reach = {}
    for name in ("convlstm", "sa_convlstm"):
        model = get_model(name, hidden=(8,), kernel=3, patch=1).double().eval()
        frame = torch.rand(1, 1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
        far = model(frame, 1)[0, 0, 0, 16:, 16:].sum()  # beyond any 3x3-kernel receptive field
        (gradient,) = torch.autograd.grad(far, frame)
        reach[name] = float(gradient[0, 0, 0, 0, 0].abs())
    assert reach["convlstm"] == 0.0
    assert reach["sa_convlstm"] > 1e-9


def test_predrnn_v2_decoupling_loss_is_available_and_differentiable() -> None:
    model = get_model("predrnn", hidden=(8, 8), kernel=3, patch=1, decouple_beta=0.1)
    model(torch.rand(2, 3, 1, 8, 8), 2)
    assert model.decouple_loss is not None and 0.0 <= model.decouple_loss.item()
    model.decouple_loss.backward()
    assert model.adapter.weight.grad is not None


def test_balanced_loss_weights_heavy_rain() -> None:
    rates = torch.tensor([0.0, 0.4, 0.5, 1.9, 2.0, 7.0, 12.0, 45.0])
    assert balance_weights(rates).tolist() == [1, 1, 1, 1, 2, 5, 10, 30]
    prediction, target = torch.zeros(1, 2), torch.ones(1, 2)
    mask = torch.tensor([[True, False]])
    assert float(mse_mae(prediction, target, mask)) == 2.0  # only the observed pixel counts


@pytest.fixture(scope="module")
def radar_sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    store = str(tmp_path_factory.mktemp("overfit") / "s.zarr")
    ingest(sample_files("fmi", 12), store, "fmi", fmt="fmi_pgm")
    ds = SequenceDataset(store, "fmi", 3, 3, crop=16, split=None)  # 16 px: a quarter of the cost of 32, same lesson
    items = [ds[0], ds[5]]
    return {k: torch.stack([item[k] for item in items]) for k in ("inputs", "targets", "target_mask")}


@pytest.mark.slow
# steps: where each reaches a tenfold fall with margin
# (measured: convlstm 12x at 100, sa_convlstm 13x at 450, predrnn 13x at 300)
@pytest.mark.parametrize(("name", "steps"), [("convlstm", 100), ("sa_convlstm", 450), ("predrnn", 300)])
def test_tiny_model_overfits_real_radar(name: str, steps: int, radar_sample: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    kwargs = {"hidden": (16,) if name != "predrnn" else (16, 16), "kernel": 3, "patch": 2}
    model = get_model(name, **kwargs)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y, mask = radar_sample["inputs"], radar_sample["targets"], radar_sample["target_mask"]
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = mse_mae(model(x, 3, targets=y, target_truth_prob=0.0), y, mask)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] / min(losses[-20:]) >= 10.0, (losses[0], min(losses[-20:]))
