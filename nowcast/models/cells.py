"""Recurrent cells (the "modules" in OpenSTL's model/method/module split).

Each computes all its gates with one fused convolution per input (x, h, and m where there is
one), splitting the output channels into gates: few, large kernels rather than many small ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvLSTMCell(nn.Module):
    """Shi et al. 2015: LSTM with convolutions; gates i, f, g, o from one conv over [x, h]."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, forget_bias: float = 1.0):
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, h: Tensor | None, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """``h`` and ``c`` None: the zero state of the first step, whose h-half of the convolution
        and forget term are zero; skipping them gives the same numbers for less work."""
        if h is None:
            weight = self.conv.weight[:, : x.shape[1]]
            gates = F.conv2d(x, weight, self.conv.bias, padding=self.conv.padding)
        else:
            gates = self.conv(torch.cat([x, h], dim=1))
        i, f, g, o = torch.split(gates, self.hidden, dim=1)
        c_new = torch.sigmoid(i) * torch.tanh(g)
        if c is not None:
            c_new = torch.sigmoid(f + self.forget_bias) * c + c_new
        return torch.sigmoid(o) * torch.tanh(c_new), c_new


class STLSTMCell(nn.Module):
    """Wang et al. 2017 spatiotemporal LSTM: temporal memory C and spatiotemporal memory M.

    Returns the new h, c, m and the increments (delta_c, delta_m) that PredRNN-V2's
    decoupling loss keeps apart.
    """

    def __init__(self, in_channels: int, hidden: int, kernel: int, forget_bias: float = 1.0):
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        pad = kernel // 2
        self.conv_x = nn.Conv2d(in_channels, 7 * hidden, kernel, padding=pad)
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, kernel, padding=pad, bias=False)
        self.conv_m = nn.Conv2d(hidden, 3 * hidden, kernel, padding=pad, bias=False)
        self.conv_o = nn.Conv2d(2 * hidden, hidden, kernel, padding=pad, bias=False)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)

    def forward(self, x: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """None for ``h``, ``c`` or ``m``: a zero state (the first step), whose convolution (no
        bias) and forget term are zero; skipping them gives the same numbers for less work."""
        xi, xf, xg, xi_m, xf_m, xg_m, xo = torch.split(self.conv_x(x), self.hidden, dim=1)
        if h is not None:
            hi, hf, hg, ho = torch.split(self.conv_h(h), self.hidden, dim=1)
            xi, xf, xg, xo = xi + hi, xf + hf, xg + hg, xo + ho
        if m is not None:
            mi, mf, mg = torch.split(self.conv_m(m), self.hidden, dim=1)
            xi_m, xf_m, xg_m = xi_m + mi, xf_m + mf, xg_m + mg
        delta_c = torch.sigmoid(xi) * torch.tanh(xg)
        c_new = delta_c if c is None else torch.sigmoid(xf + self.forget_bias) * c + delta_c
        delta_m = torch.sigmoid(xi_m) * torch.tanh(xg_m)
        m_new = delta_m if m is None else torch.sigmoid(xf_m + self.forget_bias) * m + delta_m
        memory = torch.cat([c_new, m_new], dim=1)
        o = torch.sigmoid(xo + self.conv_o(memory))
        return o * torch.tanh(self.conv_last(memory)), c_new, m_new, delta_c, delta_m


class SelfAttentionMemory(nn.Module):
    """Lin et al. 2020 SAM: a memory M updated by attention over the hidden state and itself.

    Z_h = softmax(Q_h^T K_h) V_h and Z_m = softmax(Q_h^T K_m) V_m (queries from H, over all
    positions), fused by a 1x1 conv into Z; gates from [Z, H] update M, and the output is
    o * M. Every position sees every other in one step.
    """

    def __init__(self, hidden: int, key_channels: int | None = None):
        super().__init__()
        self.hidden = hidden
        self.key_channels = key_channels or max(hidden // 8, 4)
        kc = self.key_channels
        self.qkv_h = nn.Conv2d(hidden, 2 * kc + hidden, 1)  # Q_h, K_h, V_h in one conv
        self.kv_m = nn.Conv2d(hidden, kc + hidden, 1)  # K_m, V_m in one conv
        self.fuse = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.gates = nn.Conv2d(3 * hidden, 3 * hidden, 1)  # i', g', o' from [Z, H]

    def forward(self, h: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        b, _, height, width = h.shape
        kc = self.key_channels
        q, k_h, v_h = torch.split(self.qkv_h(h).flatten(2), [kc, kc, self.hidden], dim=1)
        k_m, v_m = torch.split(self.kv_m(m).flatten(2), [kc, self.hidden], dim=1)
        q = q.transpose(1, 2)  # [B, N, kc]
        z_h = torch.bmm(v_h, torch.softmax(torch.bmm(q, k_h), dim=-1).transpose(1, 2))
        z_m = torch.bmm(v_m, torch.softmax(torch.bmm(q, k_m), dim=-1).transpose(1, 2))
        z = self.fuse(torch.cat([z_h, z_m], dim=1).view(b, 2 * self.hidden, height, width))
        i, g, o = torch.split(self.gates(torch.cat([z, h], dim=1)), self.hidden, dim=1)
        i = torch.sigmoid(i)
        m_new = (1.0 - i) * m + i * torch.tanh(g)
        return torch.sigmoid(o) * m_new, m_new


class SAConvLSTMCell(nn.Module):
    """A ConvLSTM cell whose hidden state is refined by the self-attention memory."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, forget_bias: float = 1.0):
        super().__init__()
        self.lstm = ConvLSTMCell(in_channels, hidden, kernel, forget_bias)
        self.sam = SelfAttentionMemory(hidden)

    def forward(self, x: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, c = self.lstm(x, h, c)
        h, m = self.sam(h, m)
        return h, c, m
