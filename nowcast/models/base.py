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
    """

    motion = False  # hybrids (nowcast.models.motion.MotionConditioning) set it

    def __init__(self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64), kernel: int = 3, patch: int = 1):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (same-size convolutions), got {kernel}")
        if patch < 1 or not hidden:
            raise ValueError("patch must be >= 1 and hidden must list at least one layer")
        self.in_channels, self.hidden, self.kernel, self.patch = in_channels, tuple(hidden), kernel, patch
        self.frame_channels = in_channels * patch * patch

    def patchify(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} input channel(s), got {c}")
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
        return self.frame_channels * (2 if self.motion else 1)

    def forward(
        self, inputs: Tensor, t_out: int, targets: Tensor | None = None,
        input_truth_prob: float = 1.0, target_truth_prob: float = 0.0, extrapolation: Tensor | None = None,
    ) -> Tensor:
        x = self.patchify(inputs)
        y = self.patchify(targets) if targets is not None else None
        t_in = x.shape[1]
        # hybrid: step t also reads its best estimate of frame t + 1 and corrects it; that is the
        # observed frame while inputs last and the extrapolation for each lead afterwards
        estimates = stacks = None
        if self.motion:
            ext = self.extrapolation_for(inputs, t_out, extrapolation)
            estimates, stacks = self.motion_estimates(torch.cat([inputs[:, 1:], ext], dim=1))
        state = self.initial_state(x)
        prediction: Tensor | None = None
        outputs = []
        for t in range(t_in + t_out - 1):
            if t < t_in:
                frame = x[:, t] if prediction is None else choose(x[:, t], prediction, input_truth_prob)
            elif y is not None:
                frame = choose(y[:, t - t_in], prediction, target_truth_prob)
            else:
                frame = prediction
            if estimates is None:
                prediction, state = self.step(frame, state)
            else:
                head, state = self.step(torch.cat([frame, estimates[:, t]], dim=1), state)
                prediction = self.combine(stacks[:, t], head, max(0, t - t_in + 1))
            if t >= t_in - 1:
                outputs.append(prediction)
        return self.unpatchify(torch.stack(outputs, dim=1))
