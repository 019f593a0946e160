"""``convlstm_exceedance``: the ConvLSTM with an exceedance-probability head, a probabilistic network.

The body is the registered ``convlstm`` (encoder stack, forecaster stack, 1x1 convolution over all
forecaster hidden states), unchanged. The head gives, per pixel and lead, the log-odds of the rain rate
reaching each of a fixed set of thresholds ``t_1 < ... < t_K`` (mm/h), built cumulatively:

    l_1 = a(h),   l_k = l_{k-1} - softplus(d_k(h))   =>   P(rate >= t_k) = sigmoid(l_k)

so the probabilities never rise with the threshold, by construction. It is trained with binary
cross-entropy per threshold over the observed pixels (``loss_and_forecast``, which ``NowcastModule``
calls instead of its pixel loss): a proper score, so the probabilities it learns are calibrated in
expectation. ``weights`` scale each threshold's whole term (rare thresholds would otherwise hardly
count), never one outcome against the other, which would bias the probabilities.

Between its thresholds the network's distribution is read as a survival function in the normalised
(log) space: ``S(z) = P(Z >= z)`` is ``p_1`` from 0 up to ``t_1`` (rates below the first threshold
count as dry), linear between thresholds, and falls linearly to 0 at ``ceiling`` mm/h. From it:

- ``forward_probabilities(inputs, t_out, levels)``: P(rate >= level) at any thresholds (normalised,
  ``nowcast.ensembles``), 0..1, non-increasing in the level;
- ``forward(inputs, t_out)``: the deterministic forecast every other caller gets: the mean of ``z``
  (the area under ``S``, a probability-weighted field), or with ``level`` the rate exceeded with that
  probability (0.5: the median);
- ``forward_quantiles(inputs, t_out, q)``: per-pixel quantiles, e.g. to score the CRPS of the
  distribution with the estimator ensembles use (``bench/exceedance_network.py``).

``load_initial_state`` starts it from a trained ``convlstm`` of the same sizes: the body is copied and
the head starts as soft steps of that network's forecast ``y``, ``P(rate >= t_k) = sigmoid((y - z_k) / tau)``,
so fine-tuning starts from the deterministic network's skill instead of from nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowcast.models.convlstm import ConvLSTM
from pipelines.normalization import RainNormalizer

#: thresholds (mm/h) the head forecasts; requested thresholds between them are interpolated
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0)
#: the rate (mm/h) at which the survival function reaches 0
DEFAULT_CEILING = 100.0
#: width (normalised units) of the soft steps the head starts from when it adopts a ``convlstm``
INIT_TEMPERATURE = 0.05
#: a target counts as reaching a threshold this close below it (float32 round-off of stored values)
LEVEL_TOLERANCE = 1e-5


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class ThresholdDistribution:
    """A per-pixel distribution given by its survival function at fixed thresholds (``knots``): what
    every exceedance network shares (this module's and ``nowcast.models.exceedance_hybrid``'s). The
    class it is mixed into defines ``survival(inputs, t_out, **conditioning) -> [B, t_out, K, H, W]``."""

    thresholds: tuple[float, ...]
    level: float | None
    knots: Tensor
    weights: Tensor

    def init_thresholds(self, thresholds: Sequence[float], weights: Sequence[float] | None, ceiling: float,
                        level: float | None, normalization: dict | None) -> None:
        """Check and place the thresholds (normalised knots, the ceiling last) and the loss weights."""
        thresholds = [float(t) for t in thresholds]
        if not thresholds or any(t <= 0 for t in thresholds) or sorted(set(thresholds)) != thresholds:
            raise ValueError(f"thresholds must be increasing rain rates above 0 mm/h, got {thresholds}")
        if ceiling <= thresholds[-1]:
            raise ValueError(f"ceiling ({ceiling} mm/h) must lie above the last threshold ({thresholds[-1]})")
        weights = [1.0] * len(thresholds) if weights is None else [float(w) for w in weights]
        if len(weights) != len(thresholds) or any(w <= 0 for w in weights):
            raise ValueError(f"give one positive weight per threshold ({len(thresholds)}), got {weights}")
        if level is not None and not 0.0 < level < 1.0:
            raise ValueError(f"level must lie strictly between 0 and 1 (or be None), got {level}")
        self.thresholds, self.ceiling_rate, self.level = tuple(thresholds), float(ceiling), level
        self.normalizer = RainNormalizer.from_dict(normalization) if normalization else RainNormalizer()
        levels = self.normalizer.forward(torch.tensor([*thresholds, ceiling], dtype=torch.float64)).float()
        if not bool((levels[1:] > levels[:-1]).all()):
            raise ValueError(f"the normalisation {self.normalizer.to_dict()} does not separate the thresholds")
        # knots of the survival function (normalised): the thresholds, then the ceiling where it reaches 0
        self.register_buffer("knots", levels, persistent=False)
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)

    def survival(self, inputs: Tensor, t_out: int, **conditioning: Any) -> Tensor:
        raise NotImplementedError

    def load_body(self, state: dict[str, Tensor], head: set[str], source: str) -> None:
        """Load another network's weights into everything but ``head``; any misfit (a missing or extra
        tensor, or one of another size) is a ValueError naming it, which training reports as a mismatch."""
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)  # type: ignore[attr-defined]
        except RuntimeError as exc:  # tensors of other sizes: another network's hidden sizes or patch
            raise ValueError(f"the {source}'s weights do not fit (train it with the same sizes): {exc}") from exc
        if unexpected or set(missing) != head:
            raise ValueError(f"the {source}'s body does not fit: missing {missing}, unexpected {unexpected}")

    def _knot_values(self, s: Tensor) -> Tensor:
        """S at every knot (the thresholds, then 0 at the ceiling), along dim -3."""
        return torch.cat([s, torch.zeros_like(s[..., :1, :, :])], dim=-3)

    def probabilities_from(self, s: Tensor, levels: Tensor) -> Tensor:
        """The survival function at ``levels`` (normalised) from its values at the thresholds (dim -3)."""
        knots = self.knots.to(s.dtype)
        values = self._knot_values(s)
        out = []
        for z in levels.to(s.dtype).reshape(-1).tolist():
            if z <= 0.0:
                out.append(torch.ones_like(s[..., 0, :, :]))
            elif z <= float(knots[0]):
                out.append(s[..., 0, :, :])
            elif z >= float(knots[-1]):
                out.append(torch.zeros_like(s[..., 0, :, :]))
            else:
                i = int(torch.searchsorted(knots, torch.tensor(z, dtype=knots.dtype), right=False)) - 1
                share = (z - float(knots[i])) / float(knots[i + 1] - knots[i])
                out.append(values[..., i, :, :] + share * (values[..., i + 1, :, :] - values[..., i, :, :]))
        return torch.stack(out, dim=-3)

    def mean_from(self, s: Tensor) -> Tensor:
        """The mean of z: the area under S (S = p_1 from 0 to the first threshold, trapezoids after)."""
        knots = self.knots.to(s.dtype).view(-1, 1, 1)
        values = self._knot_values(s)
        area = s[..., 0, :, :] * knots[0, 0, 0]
        return area + (0.5 * (values[..., 1:, :, :] + values[..., :-1, :, :]) * (knots[1:] - knots[:-1])).sum(dim=-3)

    def quantile_from(self, s: Tensor, exceedance: float) -> Tensor:
        """The normalised rate exceeded with probability ``exceedance``: 0 where even the first threshold
        is less likely than that, else interpolated on S's segment that crosses it."""
        knots = self.knots.to(s.dtype)
        values = self._knot_values(s)  # [..., K + 1, H, W], non-increasing, ending at 0
        above = (values >= exceedance).sum(dim=-3, keepdim=True)  # S is non-increasing: a prefix
        i = (above - 1).clamp(min=0, max=len(self.thresholds) - 1)
        s_i, s_j = values.gather(-3, i).squeeze(-3), values.gather(-3, i + 1).squeeze(-3)
        z_i, z_j = knots[i.squeeze(-3)], knots[i.squeeze(-3) + 1]
        share = ((s_i - exceedance) / (s_i - s_j).clamp(min=1e-12)).clamp(0.0, 1.0)
        return torch.where(above.squeeze(-3) > 0, z_i + share * (z_j - z_i), torch.zeros_like(z_i))

    def deterministic_from(self, s: Tensor) -> Tensor:
        return self.mean_from(s) if self.level is None else self.quantile_from(s, self.level)

    # -- the probabilistic outputs (nowcast.ensembles) --------------------------------------------
    def forward_probabilities(self, inputs: Tensor, t_out: int, thresholds: Tensor) -> Tensor:
        """[B, T, 1, H, W] normalised -> [B, t_out, len(thresholds), H, W]: P(rate >= threshold), 0..1."""
        return self.probabilities_from(self.survival(inputs, t_out), torch.as_tensor(thresholds))

    def forward_quantiles(self, inputs: Tensor, t_out: int, exceedances: Sequence[float]) -> Tensor:
        """[B, T, 1, H, W] -> [B, len(exceedances), t_out, H, W]: per pixel, the normalised rate exceeded
        with each probability (quantile 1 - e). Pixel by pixel, not spatially coherent fields."""
        s = self.survival(inputs, t_out)
        return torch.stack([self.quantile_from(s, float(e)) for e in exceedances], dim=1)

    def threshold_loss(self, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Weighted mean over thresholds of the binary cross-entropy over observed pixels."""
        target = targets[:, :, :1]
        valid = mask[:, :, :1].to(logits.dtype)
        events = (target >= self.knots[:-1].view(1, 1, -1, 1, 1) - LEVEL_TOLERANCE).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, events, reduction="none") * valid
        per_threshold = bce.sum(dim=(0, 1, 3, 4)) / valid.sum().clamp(min=1.0)
        return (per_threshold * self.weights.to(per_threshold)).sum()


class ConvLSTMExceedance(ThresholdDistribution, ConvLSTM):
    """ConvLSTM whose head forecasts P(rate >= t_k) for ``thresholds``; one rain channel out.

    With ``in_channels`` 1 and frames of several channels, each channel is forecast on its own (as the
    baselines do); with auxiliary inputs (``in_channels`` > 1) the first channel is the one forecast."""

    def __init__(self, in_channels: int = 1, hidden: tuple[int, ...] = (64, 64), kernel: int = 3, patch: int = 1,
                 out_channels: int | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 weights: Sequence[float] | None = None, ceiling: float = DEFAULT_CEILING, level: float | None = None,
                 normalization: dict | None = None):
        if out_channels not in (None, 1):
            raise ValueError(f"convlstm_exceedance forecasts one rain channel, got out_channels={out_channels}")
        super().__init__(in_channels, hidden, kernel, patch, out_channels=1)
        self.init_thresholds(thresholds, weights, ceiling, level, normalization)
        # the 1x1 head: per patch position, the first threshold's log-odds, then K-1 increments
        self.output = nn.Conv2d(sum(self.hidden), len(self.thresholds) * self.patch * self.patch, 1)
        self._init_increments()

    # -- the distribution ----------------------------------------------------------------------
    def _init_increments(self, temperature: float = INIT_TEMPERATURE) -> None:
        """Increments that space the thresholds' log-odds like soft steps of width ``temperature``."""
        p2 = self.patch * self.patch
        with torch.no_grad():
            gaps = (self.knots[1:-1] - self.knots[:-2]) / temperature
            for k, gap in enumerate(gaps.tolist(), start=1):
                self.output.weight[k * p2 : (k + 1) * p2].zero_()
                self.output.bias[k * p2 : (k + 1) * p2].fill_(_softplus_inverse(max(gap, 1e-4)))

    def logits(self, inputs: Tensor, t_out: int) -> Tensor:
        """[B, T, C, H, W] normalised -> [B, t_out, K, H, W] log-odds of reaching each threshold
        (with ``in_channels`` 1 and C > 1: [B, t_out, C, K, H, W], each channel on its own)."""
        if self.in_channels == 1 and inputs.shape[2] > 1:
            b, t, c, h, w = inputs.shape
            folded = inputs.transpose(1, 2).reshape(b * c, t, 1, h, w)
            out = self.logits(folded, t_out)
            return out.reshape(b, c, *out.shape[1:]).transpose(1, 2)
        raw = super().forward(inputs, t_out)  # [B, t_out, K, H, W]: pixel-shuffled head channels
        first, increments = raw[:, :, :1], F.softplus(raw[:, :, 1:])
        return torch.cat([first, first - torch.cumsum(increments, dim=2)], dim=2)

    def survival(self, inputs: Tensor, t_out: int, **_: Any) -> Tensor:
        """P(rate >= t_k) at the head's thresholds: [B, t_out, (C,) K, H, W], non-increasing in k."""
        return torch.sigmoid(self.logits(inputs, t_out))

    # -- the Forecaster interface --------------------------------------------------------------
    def forward(self, inputs: Tensor, t_out: int, targets: Tensor | None = None, **_: Any) -> Tensor:
        """The deterministic forecast [B, t_out, C, H, W] (normalised) from the distribution."""
        s = self.survival(inputs, t_out)
        out = self.deterministic_from(s)
        return out.unsqueeze(2) if out.dim() == 4 else out

    # -- training (called by nowcast.training.NowcastModule) ---------------------------------------
    def loss_and_forecast(self, inputs: Tensor, targets: Tensor, mask: Tensor, t_out: int,
                          **_: Any) -> tuple[Tensor, Tensor]:
        """Weighted mean over thresholds of the binary cross-entropy over observed pixels, and the
        deterministic forecast [B, t_out, 1, H, W] of the same pass (for the validation scores)."""
        logits = self.logits(inputs, t_out)  # [B, T, K, H, W]
        loss = self.threshold_loss(logits, targets, mask)
        return loss, self.deterministic_from(torch.sigmoid(logits)).unsqueeze(2)

    def load_initial_state(self, state: dict[str, Tensor], source: str) -> None:
        """Start from another checkpoint's network: this model's own (loaded as is) or a trained
        ``convlstm`` of the same sizes (body copied; head as soft steps of its forecast)."""
        if source == "convlstm_exceedance":
            self.load_state_dict(state)
            return
        if source != "convlstm":
            raise ValueError(f"convlstm_exceedance starts from a convlstm or a convlstm_exceedance, not {source!r}")
        body = {k: v for k, v in state.items() if not k.startswith("output.")}
        self.load_body(body, {"output.weight", "output.bias"}, "convlstm")
        weight, bias = state["output.weight"], state["output.bias"]
        p2 = self.patch * self.patch
        if weight.shape != (p2, sum(self.hidden), 1, 1):
            raise ValueError(f"the convlstm's output layer has shape {tuple(weight.shape)}, expected "
                             f"{(p2, sum(self.hidden), 1, 1)}: train it with one channel and the same sizes")
        with torch.no_grad():
            self.output.weight[:p2] = weight / INIT_TEMPERATURE
            self.output.bias[:p2] = (bias - self.knots[0]) / INIT_TEMPERATURE
        self._init_increments()
