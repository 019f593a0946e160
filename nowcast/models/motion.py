"""Motion-conditioned ("hybrid") networks: each plain network, correcting a pysteps nowcast.

``convlstm_flow``, ``predrnn_flow`` and ``sa_convlstm_flow`` correct optical flow,
``convlstm_sprog`` corrects S-PROG. They take the same arguments as their plain versions plus
``normalization`` (the normaliser's dict, to run the baseline in mm/h when no cached
extrapolation is given).

Besides the observed frames a hybrid receives ``extrapolation`` [B, T_out, C, H, W]: its
``baseline``'s forecast for each lead (normalised): the optical-flow extrapolation of the last
frame, or S-PROG's cascade forecast, which has already let go of the small scales as their
predictability decays. ConvLSTM's forecaster reads it
at each lead; PredRNN and SA-ConvLSTM read, at every step, their frame beside the best estimate
of the next one (the next observed frame while inputs last, then the extrapolation).

The network does not paint frames from scratch. For each lead its head gives, per pixel, a
residual and the weights of a scale mix: the forecast is

    ext + sum_s tanh(w_s + b_s(lead)) * (G_s * ext - ext) + residual

with G_s Gaussian blurs (sigma 1, 2, 4, 8 pixels) and b_s(lead) a learned per-lead bias. That
is S-PROG's insight, that small scales lose predictability first, made learnable and local:
where and by how much to let go of the small scales at each lead, plus growth and decay. The
head and the per-lead biases start at zero, so an untrained hybrid *is* its baseline.

With ``ceiling=True`` no forecast pixel exceeds the heaviest rain in the sample's observed frames.
Negative scale weights sharpen (e + |w| (e - G_s * e)), which can undo S-PROG's smoothing; four
of them at a peak compound, and a hybrid trained on S-PROG with the balanced loss learned to push
its cores to several hundred mm/h. Semi-Lagrangian extrapolation never exceeds the observed
maximum either (S-PROG stayed below it on the cases measured); the cap is in the forward pass, so
training sees it too.
Without ``extrapolation`` (inference) it is computed here with that baseline; training passes
the cached one (``pipelines.extrapolation``, ``data.extrapolation`` naming the same baseline).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowcast.models.convlstm import ConvLSTM
from nowcast.models.predrnn import PredRNN
from nowcast.models.sa_convlstm import SAConvLSTM
from pipelines.motion import MOTION_HISTORY

#: Gaussian blur scales (sigma, pixels) the head mixes in
SCALES = (1.0, 2.0, 4.0, 8.0)
#: leads with their own learned bias; later leads share the last one
MAX_LEAD_BIAS = 24
#: the per-lead biases are stored divided by this, so Adam moves them this much faster than the
#: network's weights: a few hundred CPU steps must be enough to learn how blur grows with lead
BIAS_GAIN = 10.0


def gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class MotionConditioning:
    """What a hybrid adds to its plain network (mixed in before it; see the module docstring)."""

    motion = True
    #: the registered baseline whose forecast this hybrid corrects
    baseline = "optical_flow"
    normalization: dict | None = None
    #: the baseline it corrects needs this much history (S-PROG's AR(2) too)
    min_input_steps = MOTION_HISTORY

    def init_motion_head(self) -> None:
        """Widen the output layer to residual + one weight per scale, all starting at zero."""
        old: nn.Conv2d = self.output
        self.output = nn.Conv2d(old.in_channels, old.out_channels * (1 + len(SCALES)), old.kernel_size,
                                padding=old.padding, bias=old.bias is not None)
        for parameter in self.output.parameters():
            nn.init.zeros_(parameter)
        self.lead_bias = nn.Parameter(torch.zeros(MAX_LEAD_BIAS, len(SCALES)))
        for i, sigma in enumerate(SCALES):
            self.register_buffer(f"kernel_{i}", gaussian_kernel(sigma), persistent=False)

    def extrapolation_for(self, inputs: Tensor, t_out: int, extrapolation: Tensor | None) -> Tensor:
        if extrapolation is not None:
            if extrapolation.shape[1] < t_out:
                raise ValueError(f"extrapolation has {extrapolation.shape[1]} leads, {t_out} requested")
            return extrapolation[:, :t_out].to(inputs)
        from nowcast.models import model_class

        with torch.no_grad():  # of the forecast channels only: auxiliary ones are not advected
            return model_class(self.baseline)(self.normalization)(inputs[:, :, : self.out_channels], t_out)

    def _blur(self, frames: Tensor, i: int) -> Tensor:
        """Separable Gaussian blur of [N, 1, H, W], edges replicated (no dry rim)."""
        kernel = getattr(self, f"kernel_{i}").to(frames)
        r = kernel.numel() // 2
        out = F.conv2d(F.pad(frames, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))

    def motion_estimates(self, estimates: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T, C, H, W] -> the patched estimates [B, T, Cp, h, w] and, for ``combine``, the stack
        [B, T, 1 + S, Cp, h, w] of the estimate and its blur differences (G_s * e - e)."""
        b, t, c, h, w = estimates.shape
        flat = estimates.reshape(b * t * c, 1, h, w)
        diffs = torch.stack([self._blur(flat, i) - flat for i in range(len(SCALES))], dim=1)
        patched = self.patchify(estimates, c)
        folded = self._fold(diffs.reshape(b, t, len(SCALES) * c, h, w))
        folded = folded.reshape(b, t, len(SCALES), patched.shape[2], *patched.shape[-2:])
        return patched, torch.cat([patched.unsqueeze(2), folded], dim=2)

    def _fold(self, x: Tensor) -> Tensor:
        if self.patch == 1:
            return x
        b, t, k, h, w = x.shape
        folded = F.pixel_unshuffle(x.reshape(b * t, k, h, w), self.patch)
        return folded.reshape(b, t, -1, h // self.patch, w // self.patch)

    def combine(self, stack: Tensor, head: Tensor, lead: int) -> Tensor:
        """stack [B, 1 + S, Cp, h, w] (estimate, blur differences) and the head's output
        [B, (1 + S) Cp, h, w] (residual, scale weights) -> the frame [B, Cp, h, w]."""
        head = head.reshape(stack.shape)
        bias = BIAS_GAIN * self.lead_bias[min(lead, MAX_LEAD_BIAS - 1)].view(1, -1, 1, 1, 1)
        weights = torch.tanh(head[:, 1:] + bias)
        return stack[:, 0] + (weights * stack[:, 1:]).sum(dim=1) + head[:, 0]


def _hybrid(plain: type, baseline: str = "optical_flow") -> type:
    class Hybrid(MotionConditioning, plain):
        def __init__(self, *args: Any, normalization: dict | None = None, ceiling: bool = False, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.normalization, self.ceiling = normalization, ceiling
            self.init_motion_head()

        def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **kwargs: Any) -> Tensor:
            out = super().forward(inputs, t_out, targets, **kwargs)
            if not self.ceiling:
                return out
            # per sample and channel: the heaviest observed rain (normalisation is monotonic)
            return torch.minimum(out, inputs[:, :, : self.out_channels].amax(dim=(1, 3, 4), keepdim=True))

    Hybrid.baseline = baseline
    suffix = {"optical_flow": "Flow", "sprog": "SProg"}[baseline]
    Hybrid.__name__ = Hybrid.__qualname__ = f"{plain.__name__}{suffix}"
    Hybrid.__doc__ = f"{plain.__name__} that corrects the {baseline} forecast (see nowcast.models.motion)."
    return Hybrid


ConvLSTMFlow = _hybrid(ConvLSTM)
PredRNNFlow = _hybrid(PredRNN)
SAConvLSTMFlow = _hybrid(SAConvLSTM)
ConvLSTMSProg = _hybrid(ConvLSTM, "sprog")
