"""Self-Attention ConvLSTM (Lin et al., AAAI 2020).

Stacked ConvLSTM cells, each followed by the self-attention memory (SAM) module with its own
memory M per layer: attention over all positions of the hidden state and of M lets one step
relate distant regions, which a convolution's receptive field cannot.
"""

from __future__ import annotations

from torch import Tensor, nn

from nowcast.models.base import FrameFeedingForecaster
from nowcast.models.cells import SAConvLSTMCell


class SAConvLSTM(FrameFeedingForecaster):
    #: attention is quadratic in the positions: forecasts on larger grids run in overlapping tiles of
    #: this many pixels (nowcast.forecaster); training crops are smaller anyway
    attention_tile = 128

    def __init__(
        self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64, 64, 64), kernel: int = 3, patch: int = 4,
        forget_bias: float = 1.0, out_channels: int | None = None,
    ):
        super().__init__(in_channels, hidden, kernel, patch, out_channels)
        below = [self.step_channels, *self.hidden[:-1]]
        self.cells = nn.ModuleList(
            SAConvLSTMCell(b, h, kernel, forget_bias) for b, h in zip(below, self.hidden, strict=True)
        )
        self.output = nn.Conv2d(self.hidden[-1], self.out_frame_channels, 1)

    def initial_state(self, x: Tensor) -> list[Tensor | None]:
        # h and c start as the zero state the ConvLSTM cell skips work for; SAM's memory m is read
        # through biased convolutions, so it starts as real zeros
        n = len(self.hidden)
        return [None] * (2 * n) + [self.zeros(x, width) for width in self.hidden]  # h, c, m per layer

    def step(self, frame: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        n = len(self.cells)
        h, c, m = state[:n], state[n : 2 * n], state[2 * n :]
        below = frame
        for layer, cell in enumerate(self.cells):
            h[layer], c[layer], m[layer] = cell(below, h[layer], c[layer], m[layer])
            below = h[layer]
        return self.output(h[-1]), [*h, *c, *m]
