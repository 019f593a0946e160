"""Recurrent cells (the "modules" in OpenSTL's model/method/module split).

Each computes all its gates with one fused convolution per input (x, h, and m where there is
one), splitting the output channels into gates: few, large kernels rather than many small ones.

A cell's step is a plain function of tensors (``convlstm_step``, ``stlstm_step``, ``sa_convlstm_step``)
that the module calls with its parameters: eager, op for op as the equations read, or compiled as one
small graph per cell shape (``nowcast.models.fast_path``), where the gate arithmetic fuses into one
elementwise kernel. Under the compiled path PredRNN's cell also computes its gates with one convolution
over ``[x, h, m]`` (``fuse_convs``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowcast.models.fast_path import FastPathCell, run_step


def lstm_gates(gates: Tensor, c: Tensor | None, hidden: int, forget_bias: float) -> tuple[Tensor, Tensor]:
    """The ConvLSTM gate arithmetic on the pre-activations [i, f, g, o]: (h, c) of the step (c None: zero)."""
    i, f, g, o = torch.split(gates, hidden, dim=1)
    c_new = torch.sigmoid(i) * torch.tanh(g)
    if c is not None:
        c_new = torch.sigmoid(f + forget_bias) * c + c_new
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def convlstm_step(x: Tensor, h: Tensor | None, c: Tensor | None, weight: Tensor, bias: Tensor | None,
                  padding: tuple[int, int], hidden: int, forget_bias: float) -> tuple[Tensor, Tensor]:
    """One ConvLSTM step: one convolution over [x, h], then ``lstm_gates``. ``h`` None: the zero state,
    whose h-half of the convolution is zero work and is skipped."""
    if h is None:
        gates = F.conv2d(x, weight[:, : x.shape[1]], bias, padding=padding)
    else:
        gates = F.conv2d(torch.cat([x, h], dim=1), weight, bias, padding=padding)
    return lstm_gates(gates, c, hidden, forget_bias)


class ConvLSTMCell(FastPathCell):
    """Shi et al. 2015: LSTM with convolutions; gates i, f, g, o from one conv over [x, h]."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, forget_bias: float = 1.0):
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, h: Tensor | None, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """``h`` and ``c`` None: the zero state of the first step, whose h-half of the convolution
        and forget term are zero; skipping them gives the same numbers for less work."""
        return run_step(self, convlstm_step, x, h, c, self.conv.weight, self.conv.bias, self.conv.padding,
                        self.hidden, self.forget_bias)


def _stlstm_gate_weight(wx: Tensor, wh: Tensor | None, wm: Tensor | None, hidden: int) -> Tensor:
    """One convolution's weight over [x, h, m] (those given) whose output is conv_x's seven gates
    [i, f, g, i', f', g', o] plus conv_h's [i, f, g, o] and conv_m's [i', f', g'] added to theirs."""
    parts = [wx]
    k = wx.shape[2:]
    if wh is not None:
        parts.append(torch.cat([wh[: 3 * hidden], wh.new_zeros(3 * hidden, hidden, *k), wh[3 * hidden :]], dim=0))
    if wm is not None:
        parts.append(torch.cat([wm.new_zeros(3 * hidden, hidden, *k), wm, wm.new_zeros(hidden, hidden, *k)], dim=0))
    return torch.cat(parts, dim=1)


def stlstm_step(x: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor | None, wx: Tensor, bx: Tensor | None,
                wh: Tensor, wm: Tensor, wo: Tensor, wlast: Tensor, padding: tuple[int, int], hidden: int,
                forget_bias: float, fuse: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One ST-LSTM step (``STLSTMCell``). ``fuse``: the gates from one convolution over [x, h, m]
    instead of conv_x + conv_h + conv_m (the same sums, in one reduction)."""
    if fuse and (h is not None or m is not None):
        inputs = [x] + [s for s in (h, m) if s is not None]
        weight = _stlstm_gate_weight(wx, wh if h is not None else None, wm if m is not None else None, hidden)
        gates = F.conv2d(torch.cat(inputs, dim=1), weight, bx, padding=padding)
        xi, xf, xg, xi_m, xf_m, xg_m, xo = torch.split(gates, hidden, dim=1)
    else:
        xi, xf, xg, xi_m, xf_m, xg_m, xo = torch.split(F.conv2d(x, wx, bx, padding=padding), hidden, dim=1)
        if h is not None:
            hi, hf, hg, ho = torch.split(F.conv2d(h, wh, None, padding=padding), hidden, dim=1)
            xi, xf, xg, xo = xi + hi, xf + hf, xg + hg, xo + ho
        if m is not None:
            mi, mf, mg = torch.split(F.conv2d(m, wm, None, padding=padding), hidden, dim=1)
            xi_m, xf_m, xg_m = xi_m + mi, xf_m + mf, xg_m + mg
    delta_c = torch.sigmoid(xi) * torch.tanh(xg)
    c_new = delta_c if c is None else torch.sigmoid(xf + forget_bias) * c + delta_c
    delta_m = torch.sigmoid(xi_m) * torch.tanh(xg_m)
    m_new = delta_m if m is None else torch.sigmoid(xf_m + forget_bias) * m + delta_m
    memory = torch.cat([c_new, m_new], dim=1)
    o = torch.sigmoid(xo + F.conv2d(memory, wo, None, padding=padding))
    return o * torch.tanh(F.conv2d(memory, wlast)), c_new, m_new, delta_c, delta_m


class STLSTMCell(FastPathCell):
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
        compiled = self.compiled_for(x)
        return run_step(self, stlstm_step, x, h, c, m, self.conv_x.weight, self.conv_x.bias, self.conv_h.weight,
                        self.conv_m.weight, self.conv_o.weight, self.conv_last.weight, self.conv_x.padding,
                        self.hidden, self.forget_bias, compiled and self.fuse_convs)


def sam_step(h: Tensor, m: Tensor, w_qkv: Tensor, b_qkv: Tensor, w_kv: Tensor, b_kv: Tensor, w_fuse: Tensor,
             b_fuse: Tensor, w_gates: Tensor, b_gates: Tensor, hidden: int, key_channels: int
             ) -> tuple[Tensor, Tensor]:
    """One self-attention memory update (``SelfAttentionMemory``): (h, m) of the step."""
    b, _, height, width = h.shape
    kc = key_channels
    q, k_h, v_h = torch.split(F.conv2d(h, w_qkv, b_qkv).flatten(2), [kc, kc, hidden], dim=1)
    k_m, v_m = torch.split(F.conv2d(m, w_kv, b_kv).flatten(2), [kc, hidden], dim=1)
    q = q.transpose(1, 2)  # [B, N, kc]
    z_h = torch.bmm(v_h, torch.softmax(torch.bmm(q, k_h), dim=-1).transpose(1, 2))
    z_m = torch.bmm(v_m, torch.softmax(torch.bmm(q, k_m), dim=-1).transpose(1, 2))
    z = F.conv2d(torch.cat([z_h, z_m], dim=1).view(b, 2 * hidden, height, width), w_fuse, b_fuse)
    i, g, o = torch.split(F.conv2d(torch.cat([z, h], dim=1), w_gates, b_gates), hidden, dim=1)
    i = torch.sigmoid(i)
    m_new = (1.0 - i) * m + i * torch.tanh(g)
    return torch.sigmoid(o) * m_new, m_new


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

    def parameters_in_order(self) -> tuple[Tensor, ...]:
        """The weights and biases ``sam_step`` takes, in its order."""
        return (self.qkv_h.weight, self.qkv_h.bias, self.kv_m.weight, self.kv_m.bias, self.fuse.weight,
                self.fuse.bias, self.gates.weight, self.gates.bias)

    def forward(self, h: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        return sam_step(h, m, *self.parameters_in_order(), self.hidden, self.key_channels)


def sa_convlstm_step(x: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor, weight: Tensor,
                     bias: Tensor | None, padding: tuple[int, int], hidden: int, forget_bias: float,
                     key_channels: int, *sam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One SA-ConvLSTM step: the ConvLSTM step, then the self-attention memory (``sam``: its parameters)."""
    h, c = convlstm_step(x, h, c, weight, bias, padding, hidden, forget_bias)
    h, m = sam_step(h, m, *sam, hidden, key_channels)
    return h, c, m


class SAConvLSTMCell(FastPathCell):
    """A ConvLSTM cell whose hidden state is refined by the self-attention memory."""

    def __init__(self, in_channels: int, hidden: int, kernel: int, forget_bias: float = 1.0):
        super().__init__()
        self.lstm = ConvLSTMCell(in_channels, hidden, kernel, forget_bias)
        self.sam = SelfAttentionMemory(hidden)

    def forward(self, x: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.compiled_for(x):
            h, c = self.lstm(x, h, c)
            h, m = self.sam(h, m)
            return h, c, m
        lstm = self.lstm
        return run_step(self, sa_convlstm_step, x, h, c, m, lstm.conv.weight, lstm.conv.bias, lstm.conv.padding,
                        lstm.hidden, lstm.forget_bias, self.sam.key_channels, *self.sam.parameters_in_order())
