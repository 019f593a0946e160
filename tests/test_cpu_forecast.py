"""A forecast on CPU at the service's grid limit must finish within its timeout (issue: numbers a
user can trust, item 5). Self-attention networks run in overlapping tiles; the tiles now go
through the network TILE_BATCH at a time (one pass over 16 tiles costs a fifth of 16 passes on
CPU), and the blend must be exactly what tile-by-tile passes give. Where that is still too slow,
each model's pixel limit on a CPU comes from its measured cost (bench/cpu_forecast_limit.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nowcast.forecaster import TILE_BATCH, LoadedForecaster, tent, tile_starts
from nowcast.models import get_model
from pipelines.normalization import RainNormalizer


def test_tiles_batched_in_one_pass_blend_as_tile_by_tile_passes() -> None:
    torch.manual_seed(0)
    net = get_model("sa_convlstm", hidden=(8,), kernel=3, patch=4).eval()
    forecaster = LoadedForecaster("sa_convlstm", net, 3, 2, 5.0, RainNormalizer(), "untrained")
    z = torch.rand(2, 3, 1, 160, 352)  # two samples, 2 x 4 tiles of 128
    tile = net.attention_tile
    origins = [(y, x) for y in tile_starts(160, tile) for x in tile_starts(352, tile)]
    assert 1 < len(origins) <= TILE_BATCH
    with torch.no_grad():
        batched = forecaster._forward(z, 2)
        out, total = torch.zeros_like(batched), torch.zeros(160, 352)
        weight = torch.outer(tent(tile), tent(tile))
        for y, x in origins:  # the reference: one pass per tile
            out[..., y : y + tile, x : x + tile] += net(z[..., y : y + tile, x : x + tile], 2) * weight
            total[y : y + tile, x : x + tile] += weight
    np.testing.assert_allclose(batched.numpy(), (out / total).numpy(), atol=1e-5)


def test_every_model_the_default_service_serves_has_its_cpu_cost_measured_for_its_weights() -> None:
    """The service's CPU limits come from bench/cpu_forecast_limit.py's measurement of these very
    weights (by fingerprint): weights retrained without measuring again would be served unlimited."""
    from nowcast.forecaster import load_forecaster
    from service.serving import measured_cpu_cost
    from service.settings import ServiceSettings

    for name in ServiceSettings().models:  # persistence, optical_flow, sprog and every shipped network
        if name == "persistence":
            continue  # a copy of the last frame: nothing to limit
        cost = measured_cpu_cost(load_forecaster(name))
        assert cost is not None, f"{name}: no CPU cost for its weights; run python bench/cpu_forecast_limit.py --write"
        assert cost["pixels"] >= 1024 * 1024 and cost["cpu_seconds"] > 0 and cost["lead_steps"] == 12


def test_a_grid_a_model_cannot_forecast_within_the_timeout_on_this_cpu_is_refused_up_front(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    """Issue 31, item 5: on a CPU each model's pixel limit is what its measured cost forecasts within half
    of inference_timeout_s (fewer for more leads); a grid over it is a 422 naming the limit and the
    settings that move it, at once, instead of a 504 after the timeout."""
    import httpx
    from test_service import inline, start_server

    from nowcast.forecaster import load_forecaster
    from service.serving import cpu_pixel_limit

    attention = load_forecaster("sa_convlstm")
    limit = cpu_pixel_limit(attention, 2.0)
    assert limit is not None and cpu_pixel_limit(attention, 4.0) in (2 * limit, 2 * limit + 1)  # the timeout's share
    assert cpu_pixel_limit(attention, 2.0, 1) > 3 * limit  # 5 steps to run instead of 16
    settings = {"store": str(tmp_path / "none.zarr"),
                "models": ["persistence", "sa_convlstm", f"mine={small_checkpoint}", f"capped={small_checkpoint}"],
                "inference_timeout_s": 2.0, "model_max_grid_pixels": {"capped": 1000}, "verify_forecasts": False}
    for url in start_server(tmp_path, settings):
        grids = {m["name"]: m["grid"] for m in httpx.get(f"{url}/v1/models").json()["models"]}
        assert grids["sa_convlstm"] == {"multiple_of": 1, "max_pixels": limit, "limited_by": "cpu_cost"}
        assert grids["persistence"]["limited_by"] == grids["mine"]["limited_by"] == "max_grid_pixels"  # unmeasured
        assert grids["persistence"]["max_pixels"] == 1024 * 1024
        assert grids["capped"] == {"multiple_of": 1, "max_pixels": 1000, "limited_by": "model_max_grid_pixels"}
        side = int(limit ** 0.5) + 1
        refused = httpx.post(f"{url}/v1/forecast", json=inline("sa_convlstm", lead=12, h=side, w=side), timeout=60)
        error = refused.json()["error"]
        assert refused.status_code == 422 and error["code"] == "grid_too_large", refused.text
        assert f"more than {limit} pixels" in error["message"] and "inference_timeout_s (2 s)" in error["message"]
        assert "model_max_grid_pixels" in error["message"] and "bbox" in error["message"]
        capped = httpx.post(f"{url}/v1/forecast", json=inline("capped", lead=1, h=40, w=40), timeout=60)
        assert capped.status_code == 422 and "model_max_grid_pixels allows 'capped' at most 1000" in capped.text
        assert httpx.post(f"{url}/v1/forecast", json=inline("mine", lead=1, h=40, w=40), timeout=60).status_code == 200
