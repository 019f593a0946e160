"""PredRNN (Wang et al., NeurIPS 2017) with the PredRNN-V2 options (Wang et al., TPAMI 2022).

Stacked ST-LSTM cells. Each layer keeps its own temporal memory C across time. The
spatiotemporal memory M zigzags: it rises through the layers within a time step, and the top
layer's M at t-1 enters the bottom layer at t. Options: the decoupling loss that keeps the
increments of C and M apart (``decouple_beta``), and reverse scheduled sampling through the
``input_truth_prob`` of ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowcast.models.base import FrameFeedingForecaster
from nowcast.models.cells import STLSTMCell


class PredRNN(FrameFeedingForecaster):
    def __init__(
        self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64, 64, 64), kernel: int = 5, patch: int = 4,
        forget_bias: float = 1.0, decouple_beta: float = 0.0, out_channels: int | None = None,
    ):
        super().__init__(in_channels, hidden, kernel, patch, out_channels)
        if len(set(self.hidden)) != 1:
            raise ValueError(f"PredRNN passes M between layers, so all layers need one width; got {hidden}")
        width = self.hidden[0]
        below = [self.step_channels, *self.hidden[:-1]]
        self.cells = nn.ModuleList(STLSTMCell(b, width, kernel, forget_bias) for b in below)
        self.output = nn.Conv2d(width, self.out_frame_channels, 1, bias=False)
        self.decouple_beta = decouple_beta
        self.adapter = nn.Conv2d(width, width, 1, bias=False) if decouple_beta > 0 else None
        self.trace: list[dict] | None = None  # set to a list to record memory flow (tests)
        self.decouple_loss: Tensor | None = None

    def initial_state(self, x: Tensor) -> list[Tensor | None]:
        n = len(self.cells)
        self._t = 0
        self.decouple_loss = x.new_zeros(()) if self.adapter is not None else None
        return [None] * (2 * n + 1)  # h per layer, c per layer, m: zero (STLSTMCell skips their work)

    def step(self, frame: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        n = len(self.cells)
        h, c, m = state[:n], state[n : 2 * n], state[2 * n]
        below = frame
        for layer, cell in enumerate(self.cells):
            m_in, c_in = m, c[layer]
            h[layer], c[layer], m, delta_c, delta_m = cell(below, h[layer], c[layer], m)
            if self.trace is not None:
                self.trace.append({"t": self._t, "layer": layer, "m_in": m_in, "m_out": m, "c_in": c_in,
                                   "c_out": c[layer]})
            if self.adapter is not None:
                self.decouple_loss = self.decouple_loss + self._decoupling(delta_c, delta_m)
            below = h[layer]
        self._t += 1
        return self.output(h[-1]), [*h, *c, m]

    def _decoupling(self, delta_c: Tensor, delta_m: Tensor) -> Tensor:
        """|cosine| between the (adapted) increments of C and M, per channel over space."""
        dc = F.normalize(self.adapter(delta_c).flatten(2), dim=2)
        dm = F.normalize(self.adapter(delta_m).flatten(2), dim=2)
        return torch.mean(torch.abs((dc * dm).sum(dim=2)))
