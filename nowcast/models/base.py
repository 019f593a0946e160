"""The interface every forecaster implements, and what the recurrent ones share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Forecaster(nn.Module):
    """``forward(inputs [B, T_in, C, H, W], t_out) -> [B, T_out, C, H, W]``, normalised space."""

    #: frames of history the model needs (``None``: whatever it is given)
    min_input_steps: int = 1

    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **sampling: float) -> Tensor:
        raise NotImplementedError


class RecurrentForecaster(Forecaster):
    """Space-to-depth patching and zero states, shared by the ConvLSTM-family models.

    ``patch`` folds p x p pixel blocks into channels (as in the PredRNN authors' code), so a
    large frame costs p^2 less recurrent-state memory; H and W must be multiples of p.

    ``in_channels`` frames' channels are read, ``out_channels`` (default: all of them) are
    forecast: the first ``out_channels`` input channels are the forecast ones, the rest are
    auxiliary inputs (``pipelines.channels``: other products, their masks) that are only read.
    Frame-feeding models hold the auxiliary channels at their last observed value while they
    feed their own forecasts back.
    """

    motion = False  # hybrids (nowcast.models.motion.MotionConditioning) set it

    def __init__(self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64), kernel: int = 3, patch: int = 1,
                 out_channels: int | None = None):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (same-size convolutions), got {kernel}")
        if patch < 1 or not hidden:
            raise ValueError("patch must be >= 1 and hidden must list at least one layer")
        self.in_channels, self.hidden, self.kernel, self.patch = in_channels, tuple(hidden), kernel, patch
        self.out_channels = in_channels if out_channels is None else out_channels
        if not 1 <= self.out_channels <= in_channels:
            raise ValueError(f"out_channels must lie in 1..in_channels ({in_channels}), got {out_channels}")
        self.frame_channels = in_channels * patch * patch
        #: patched channels of a forecast frame (the leading ones of a patched input frame)
        self.out_frame_channels = self.out_channels * patch * patch

    def patchify(self, x: Tensor, channels: int | None = None) -> Tensor:
        """[B, T, C, H, W] -> [B, T, C p^2, H/p, W/p]; ``channels``: the C expected (default in_channels)."""
        b, t, c, h, w = x.shape
        expected = self.in_channels if channels is None else channels
        if c != expected:
            raise ValueError(f"model expects {expected} input channel(s), got {c}")
        if h % self.patch or w % self.patch:
            raise ValueError(f"frame size {h}x{w} is not a multiple of the patch size {self.patch}")
        if self.patch == 1:
            return x
        folded = F.pixel_unshuffle(x.reshape(b * t, c, h, w), self.patch)
        return folded.reshape(b, t, -1, h // self.patch, w // self.patch)

    def unpatchify(self, x: Tensor) -> Tensor:
        if self.patch == 1:
            return x
        b, t, c, h, w = x.shape
        return F.pixel_shuffle(x.reshape(b * t, c, h, w), self.patch).reshape(b, t, -1, h * self.patch, w * self.patch)

    def zeros(self, like: Tensor, channels: int) -> Tensor:
        b, _, _, h, w = like.shape
        return like.new_zeros(b, channels, h, w)


def choose(truth: Tensor, prediction: Tensor, truth_prob: float) -> Tensor:
    """Scheduled sampling: per sample, the true frame with probability ``truth_prob``."""
    if truth_prob >= 1.0:
        return truth
    if truth_prob <= 0.0:
        return prediction
    keep = torch.rand(truth.shape[0], 1, 1, 1, device=truth.device) < truth_prob
    return torch.where(keep, truth, prediction)


class FrameFeedingForecaster(RecurrentForecaster):
    """Models that read one frame per step and feed their own prediction back (PredRNN,
    SA-ConvLSTM): T_in + T_out - 1 steps; the output of step t predicts frame t + 1.

    Scheduled sampling: during the forecast, the true next frame replaces the prediction with
    probability ``target_truth_prob`` (Bengio et al.; decayed to 0 by the training method);
    reverse scheduled sampling (PredRNN-V2) also lets predictions replace true input frames,
    with probability ``1 - input_truth_prob``.
    """

    def step(self, frame: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def initial_state(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    @property
    def step_channels(self) -> int:
        """Channels a step reads: the frame, and for a hybrid also the estimate of the next frame."""
        return self.frame_channels + (self.out_frame_channels if self.motion else 0)

    def _full_frame(self, forecast: Tensor, auxiliary: Tensor | None) -> Tensor:
        """A forecast frame completed with the auxiliary channels (nothing to add without any)."""
        return forecast if auxiliary is None else torch.cat([forecast, auxiliary], dim=1)

    def forward(
        self, inputs: Tensor, t_out: int, targets: Tensor | None = None,
        input_truth_prob: float = 1.0, target_truth_prob: float = 0.0, extrapolation: Tensor | None = None,
    ) -> Tensor:
        x = self.patchify(inputs)
        y = self.patchify(targets[:, :, : self.out_channels], self.out_channels) if targets is not None else None
        t_in, k = x.shape[1], self.out_frame_channels
        auxiliary = x[:, :, k:] if k < self.frame_channels else None
        held = None if auxiliary is None else auxiliary[:, -1]  # the last observed auxiliary frame
        # hybrid: step t also reads its best estimate of frame t + 1 and corrects it; that is the
        # observed frame while inputs last and the extrapolation for each lead afterwards
        estimates = stacks = None
        if self.motion:
            ext = self.extrapolation_for(inputs, t_out, extrapolation)
            observed = inputs[:, 1:, : self.out_channels]
            estimates, stacks = self.motion_estimates(torch.cat([observed, ext], dim=1))
        state = self.initial_state(x)
        prediction: Tensor | None = None
        outputs = []
        for t in range(t_in + t_out - 1):
            if t < t_in:
                frame = x[:, t] if prediction is None else choose(
                    x[:, t], self._full_frame(prediction, None if auxiliary is None else auxiliary[:, t]),
                    input_truth_prob)
            elif y is not None:
                frame = self._full_frame(choose(y[:, t - t_in], prediction, target_truth_prob), held)
            else:
                frame = self._full_frame(prediction, held)
            if estimates is None:
                prediction, state = self.step(frame, state)
            else:
                head, state = self.step(torch.cat([frame, estimates[:, t]], dim=1), state)
                prediction = self.combine(stacks[:, t], head, max(0, t - t_in + 1))
            if t >= t_in - 1:
                outputs.append(prediction)
        return self.unpatchify(torch.stack(outputs, dim=1))
