"""The one definition of the categorical scores' counts, for training and verification alike.

An event is rain at or above a threshold; pixels where either side is nodata are left out;
counts are pooled (summed) over the given dimensions before any score is formed, as
verification pools them over cases. Works on numpy arrays and torch tensors, with hard (0/1)
events for scores and soft ([0, 1]) forecast events for a differentiable loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def contingency(forecast_event: Any, observed_event: Any, valid: Any, dims: Any) -> tuple[Any, Any, Any]:
    """(hits, misses, false alarms) summed over ``dims``; events and ``valid`` are 0/1 (or [0, 1]) numbers."""
    f = forecast_event * valid
    o = observed_event * valid
    both = f * o
    return both.sum(dims), (o - both).sum(dims), (f - both).sum(dims)


def csi(hits: Any, misses: Any, false_alarms: Any) -> Any:
    """Critical success index, hits / (hits + misses + false alarms); 0 where nothing happened on either side."""
    total = hits + misses + false_alarms
    return hits / (total.clamp(min=1.0) if hasattr(total, "clamp") else np.maximum(total, 1.0))
