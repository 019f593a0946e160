"""Training losses, masked to observed pixels, in the normalised space models work in."""

from __future__ import annotations

import torch
from torch import Tensor

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
