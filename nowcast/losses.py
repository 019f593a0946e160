"""Training losses, masked to observed pixels, in the normalised space models work in."""

from __future__ import annotations

import torch
from torch import Tensor

from nowcast.contingency import contingency, csi

#: HKO-7 (Shi et al. 2017) balanced loss: weight w for target rain rate >= threshold (mm/h)
BALANCE_THRESHOLDS = (0.0, 0.5, 2.0, 5.0, 10.0, 30.0)
BALANCE_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)


def balance_weights(target_mm_h: Tensor) -> Tensor:
    """Per-pixel weights so heavy rain is not washed out by the many dry pixels."""
    weights = torch.ones_like(target_mm_h)
    for threshold, weight in zip(BALANCE_THRESHOLDS, BALANCE_WEIGHTS, strict=True):
        weights = torch.where(target_mm_h >= threshold, torch.full_like(weights, weight), weights)
    return weights


def mse_mae(prediction: Tensor, target: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """(weighted) MSE + MAE over the observed pixels."""
    error = prediction - target
    w = mask.to(prediction.dtype) if weights is None else weights * mask.to(prediction.dtype)
    total = w.sum().clamp(min=1.0)
    return ((w * error.square()).sum() + (w * error.abs()).sum()) / total


def pinball(prediction: Tensor, target: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Quantile (pinball) loss over the observed pixels: its minimiser is each pixel's ``quantile``.

    Why: a forecast scores the best expected CSI at a threshold where it says "rain" wherever the
    chance of exceeding it is above CSI / (1 + CSI) (a third for a CSI of 0.5), not above one half.
    The pixel's ``quantile`` exceeds a threshold exactly where that chance is above 1 - ``quantile``,
    at every threshold at once; and since quantiles commute with monotone maps, the loss can be taken
    in the normalised (log) space.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie strictly between 0 and 1, got {quantile}")
    error = target - prediction
    w = mask.to(prediction.dtype)
    return (w * torch.maximum(quantile * error, (quantile - 1.0) * error)).sum() / w.sum().clamp(min=1.0)


def soft_csi(prediction: Tensor, target: Tensor, mask: Tensor, threshold: float, temperature: float) -> Tensor:
    """1 - CSI per lead with a sigmoid instead of a hard threshold, counts pooled over the batch.

    Why: at 1 mm/h CSI rewards the right rain *area*, which a pixel-wise loss only reaches by
    accident; pooling over the batch (not per sample) matches how the verification pools
    contingency counts. ``threshold`` and ``temperature`` are in the normalised space.
    Tensors are [B, T, C, H, W]; returns the mean over leads of 1 - CSI.
    """
    forecast = torch.sigmoid((prediction - threshold) / temperature)
    observed = (target >= threshold).to(prediction.dtype)
    counts = contingency(forecast, observed, mask.to(prediction.dtype), (0, 2, 3, 4))
    return (1.0 - csi(*counts)).mean()
