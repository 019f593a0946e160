"""``convlstm_sprog_exceedance``: probabilities from the S-PROG hybrid, by a learned neighbourhood.

The body is the registered ``convlstm_sprog`` (ConvLSTM correcting pysteps' S-PROG forecast, see
``nowcast.models.motion``), unchanged; its forecast ``y`` is this model's deterministic field. The head
turns ``y`` into P(rate >= t_k) the way a forecaster reads a deterministic nowcast: rain forecast *near* a
pixel makes rain there likely, and the nearness that matters widens with the lead. Per threshold ``t_k``
it takes the fraction of the neighbourhood forecast at or above it, in squares of several sizes
(``scales``, half-widths in pixels; 0 is the pixel itself, as FSS's neighbourhoods), and per lead a
logistic regression on their log-odds:

    f_{k,s} = B_s * sigmoid((y - z_k) / tau)                     (neighbourhood fraction, 0..1)
    l_k     = b_k(lead) + sum_s a_s(lead) logit(f_{k,s}) + sum_s c_s(lead) logit(f_{k-1,s})
    P(rate >= t_k) = sigmoid(l_k)

with ``a, c >= 0`` (softplus) and ``b_1 >= b_2 >= ...`` (increments through softplus). Every
f_{k,s} falls as k rises (a higher threshold's soft step is lower everywhere and a mean keeps the
order), so the probabilities never rise with the threshold, by construction. The second sum lets
rain just below a threshold raise its chance (a network trained on a pixel loss smooths its cores).

Trained, like ``convlstm_exceedance``, with each threshold's binary cross-entropy (a proper score), on
the body's forecasts; the body stays frozen by default (``train_body``), so a few hundred parameters
learn from the validation-like amount of data a 1 km archive has, in CPU minutes: the deterministic
skill is the hybrid's, the probabilities are its calibrated neighbourhood. This is the neighbourhood
method's idea (Theis et al. 2005; Schwartz and Sobash 2017) with the neighbourhood's size and the
calibration learned per lead and threshold instead of chosen by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowcast.models.exceedance import DEFAULT_CEILING, DEFAULT_THRESHOLDS, ThresholdDistribution, _softplus_inverse
from nowcast.models.motion import ConvLSTMSProg

#: neighbourhood half-widths (pixels): squares of 1, 5, 9, 17 and 33 pixels; 0 is the pixel itself
DEFAULT_SCALES = (0.0, 2.0, 4.0, 8.0, 16.0)
#: width (normalised units) of the soft step that turns the forecast into "at or above t_k"
STEP_WIDTH = 0.02
#: leads with their own head parameters; later leads share the last one's
MAX_LEADS = 24
#: fractions are kept this far from 0 and 1 before their log-odds are taken
FRACTION_EPS = 1e-4


class ConvLSTMSProgExceedance(ThresholdDistribution, ConvLSTMSProg):
    """The S-PROG hybrid whose forecast a learned neighbourhood turns into P(rate >= t_k)."""

    #: what its deterministic forecast is (the model card says it)
    DETERMINISTIC_FIELD = "the frozen S-PROG hybrid's own forecast"

    def __init__(self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64), kernel: int = 3, patch: int = 1,
                 out_channels: int | None = None, normalization: dict | None = None, ceiling: bool = False,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, weights: Sequence[float] | None = None,
                 top_rate: float = DEFAULT_CEILING, scales: Sequence[float] = DEFAULT_SCALES,
                 train_body: bool = False):
        if out_channels not in (None, 1):
            raise ValueError(f"convlstm_sprog_exceedance forecasts one rain channel, got out_channels={out_channels}")
        scales = [float(s) for s in scales]
        if not scales or any(s < 0 or s != int(s) for s in scales):
            raise ValueError(f"scales are half-widths of square neighbourhoods, whole pixels >= 0, got {scales}")
        super().__init__(in_channels, hidden, kernel, patch, out_channels=1, normalization=normalization,
                         ceiling=ceiling)
        # level None: the deterministic forecast is the body's own (the hybrid's skill, unchanged)
        self.init_thresholds(thresholds, weights, top_rate, None, normalization)
        self.scales, self.train_body = tuple(scales), bool(train_body)
        k, n = len(self.thresholds), len(self.scales)
        # start: the pixel and its neighbourhoods weigh alike, the thresholds' own fractions only
        self.own_weight = nn.Parameter(torch.full((MAX_LEADS, n), _softplus_inverse(1.0 / n)))
        self.below_weight = nn.Parameter(torch.full((MAX_LEADS, n), _softplus_inverse(1e-3)))
        self.first_bias = nn.Parameter(torch.zeros(MAX_LEADS))
        self.bias_steps = nn.Parameter(torch.full((MAX_LEADS, max(k - 1, 1)), _softplus_inverse(1e-3)))
        if not self.train_body:
            self.freeze_body()

    def head_parameters(self) -> list[str]:
        return ["own_weight", "below_weight", "first_bias", "bias_steps"]

    def freeze_body(self) -> None:
        """Only the head learns: the hybrid's weights stay those it was trained with."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in self.head_parameters())

    # -- the distribution ----------------------------------------------------------------------
    def _neighbourhood(self, frames: Tensor, i: int) -> Tensor:
        """Mean of [N, 1, H, W] over the square of half-width ``scales[i]`` around each pixel (edges
        replicated: the grid's rim is not dry), from an integral image: the cost does not grow with the
        square, so a 33-pixel neighbourhood costs what a 5-pixel one does."""
        r = int(round(self.scales[i]))
        if r == 0:
            return frames
        padded = F.pad(frames, (r + 1, r, r + 1, r), mode="replicate").double()
        padded[..., 0, :] = 0.0  # the integral image's leading zero row and column
        padded[..., :, 0] = 0.0
        integral = padded.cumsum(-1).cumsum(-2)
        h, w = frames.shape[-2:]
        n = 2 * r + 1
        total = (integral[..., n:, n:] - integral[..., :h, n:] - integral[..., n:, :w] + integral[..., :h, :w])
        return (total / (n * n)).to(frames.dtype)

    def deterministic(self, inputs: Tensor, t_out: int, **conditioning: Any) -> Tensor:
        """The body's forecast [B, t_out, 1, H, W] (normalised); no graph through a frozen body."""
        with torch.set_grad_enabled(self.train_body and torch.is_grad_enabled()):
            return super().forward(inputs, t_out, **conditioning)

    def logits_from(self, y: Tensor) -> Tensor:
        """The body's forecast [B, T, 1, H, W] -> log-odds [B, T, K, H, W], non-increasing in k."""
        b, t, _, h, w = y.shape
        steps = torch.sigmoid((y - self.knots[:-1].view(1, 1, -1, 1, 1).to(y)) / STEP_WIDTH)  # [B, T, K, H, W]
        flat = steps.reshape(-1, 1, h, w)
        fractions = torch.stack([self._neighbourhood(flat, i) for i in range(len(self.scales))], dim=1)
        odds = torch.logit(fractions.clamp(FRACTION_EPS, 1 - FRACTION_EPS)).reshape(b, t, -1, len(self.scales), h, w)
        below = torch.cat([odds[:, :, :1], odds[:, :, :-1]], dim=2)  # the threshold below (the first: itself)
        leads = torch.arange(t, device=y.device).clamp(max=MAX_LEADS - 1)
        own = F.softplus(self.own_weight[leads]).view(1, t, 1, -1, 1, 1)
        lower = F.softplus(self.below_weight[leads]).view(1, t, 1, -1, 1, 1)
        steps_down = torch.cumsum(F.softplus(self.bias_steps[leads]), dim=1)[:, : len(self.thresholds) - 1]
        bias = torch.cat([self.first_bias[leads, None], self.first_bias[leads, None] - steps_down], dim=1)
        return bias.view(1, t, -1, 1, 1) + (own * odds).sum(dim=3) + (lower * below).sum(dim=3)

    def survival(self, inputs: Tensor, t_out: int, **conditioning: Any) -> Tensor:
        """P(rate >= t_k) at the thresholds: [B, t_out, K, H, W], non-increasing in k."""
        return torch.sigmoid(self.logits_from(self.deterministic(inputs, t_out, **conditioning)))

    # -- the Forecaster interface --------------------------------------------------------------
    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **conditioning: Any) -> Tensor:
        """The deterministic forecast: the hybrid's own [B, t_out, 1, H, W] (normalised)."""
        return self.deterministic(inputs, t_out, **conditioning)

    # -- training (called by nowcast.training.NowcastModule) ---------------------------------------
    def loss_and_forecast(self, inputs: Tensor, targets: Tensor, mask: Tensor, t_out: int,
                          **conditioning: Any) -> tuple[Tensor, Tensor]:
        """Each threshold's weighted binary cross-entropy over observed pixels, and the body's forecast."""
        y = self.deterministic(inputs, t_out, **conditioning)
        return self.threshold_loss(self.logits_from(y), targets, mask), y

    def load_initial_state(self, state: dict[str, Tensor], source: str) -> None:
        """Start from a trained ``convlstm_sprog`` of the same sizes (the head at its start) or from
        this model's own weights."""
        if source == "convlstm_sprog_exceedance":
            self.load_state_dict(state)
            return
        if source != "convlstm_sprog":
            raise ValueError(f"convlstm_sprog_exceedance starts from a convlstm_sprog or itself, not {source!r}")
        self.load_body(state, set(self.head_parameters()), "convlstm_sprog")

