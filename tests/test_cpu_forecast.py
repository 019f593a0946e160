"""A forecast on CPU at the service's grid limit must finish within its timeout (issue: numbers a
user can trust, item 5). Self-attention networks run in overlapping tiles; the tiles now go
through the network TILE_BATCH at a time (one pass over 16 tiles costs a fifth of 16 passes on
CPU), and the blend must be exactly what tile-by-tile passes give."""

from __future__ import annotations

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
