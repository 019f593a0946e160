"""ConvLSTM encoder-forecaster (Shi et al., NeurIPS 2015).

The encoder stack reads the input frames; the forecaster stack starts from the encoder's
states (layer by layer), takes no input frames, and at each step a 1x1 convolution over all
forecaster layers' hidden states gives the frame. Predictions are not fed back, so any
number of output steps is the same computation repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nowcast.models.base import RecurrentForecaster
from nowcast.models.cells import ConvLSTMCell


class ConvLSTM(RecurrentForecaster):
    def __init__(self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64), kernel: int = 3, patch: int = 1,
                 out_channels: int | None = None):
        super().__init__(in_channels, hidden, kernel, patch, out_channels)
        below = [self.frame_channels, *self.hidden[:-1]]
        self.encoder = nn.ModuleList(ConvLSTMCell(b, h, kernel) for b, h in zip(below, self.hidden, strict=True))
        # a hybrid's forecaster reads the extrapolation of each lead; the plain one reads nothing
        first = self.out_frame_channels if self.motion else 0
        self.forecaster = nn.ModuleList(
            ConvLSTMCell(b, h, kernel) for b, h in zip([first, *self.hidden[:-1]], self.hidden, strict=True)
        )
        self.output = nn.Conv2d(sum(self.hidden), self.out_frame_channels, 1)

    def forward(
        self, inputs: Tensor, t_out: int, targets: Tensor | None = None, extrapolation: Tensor | None = None,
        **_: float,
    ) -> Tensor:
        x = self.patchify(inputs)
        ext = stacks = None
        if self.motion:
            ext, stacks = self.motion_estimates(self.extrapolation_for(inputs, t_out, extrapolation))
        h: list[Tensor | None] = [None] * len(self.hidden)  # the zero state (ConvLSTMCell skips its work)
        c: list[Tensor | None] = [None] * len(self.hidden)
        for t in range(x.shape[1]):
            below = x[:, t]
            for layer, cell in enumerate(self.encoder):
                h[layer], c[layer] = cell(below, h[layer], c[layer])
                below = h[layer]
        nothing = self.zeros(x, 0)
        outputs = []
        for k in range(t_out):
            below = nothing if ext is None else ext[:, k]
            for layer, cell in enumerate(self.forecaster):
                h[layer], c[layer] = cell(below, h[layer], c[layer])
                below = h[layer]
            head = self.output(torch.cat(h, dim=1))
            outputs.append(head if ext is None else self.combine(stacks[:, k], head, k))
        return self.unpatchify(torch.stack(outputs, dim=1))
