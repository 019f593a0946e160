"""Rain-rate normalisation: the one place that maps mm/h to model space and back.

Models see normalised tensors; users see mm/h. The normaliser is a small frozen dataclass
whose ``to_dict`` goes into checkpoints, so a checkpoint alone can undo it.

- ``log``: z = ln(1 + R / r_ref) / ln(1 + r_max / r_ref); 0 mm/h -> 0, r_max -> 1, smooth
  and exactly invertible everywhere (R >= 0).
- ``db``: z = (10 log10 R - db_zero) / (db_max - db_zero) for R >= threshold, else 0, where
  db_zero lies 5 dB below the threshold (pysteps' "zerovalue" convention), so rain at the
  threshold stays distinct from no rain; invertible for R = 0 and R >= threshold.
- ``identity``: z = R / r_max.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

Array = Any  # numpy array or torch tensor


def _is_torch(x: Array) -> bool:
    return isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class RainNormalizer:
    kind: Literal["log", "db", "identity"] = "log"
    r_ref: float = 1.0  # mm/h, log transform knee
    r_max: float = 100.0  # mm/h that maps to 1 (log, identity)
    threshold: float = 0.1  # mm/h, below this is "no rain" for the db transform
    db_max: float = 25.0  # dBR that maps to 1 (about 316 mm/h)

    def __post_init__(self) -> None:
        if self.kind not in ("log", "db", "identity"):
            raise ValueError(f"unknown normalisation {self.kind!r}: use 'log', 'db' or 'identity'")

    @property
    def db_min(self) -> float:
        return 10.0 * math.log10(self.threshold)

    @property
    def db_zero(self) -> float:
        return self.db_min - 5.0

    def forward(self, rain_rate: Array) -> Array:
        """mm/h -> model space. NaN (nodata) stays NaN; callers decide how to fill it."""
        xp = torch if _is_torch(rain_rate) else np
        r = xp.clip(rain_rate, 0.0, None) if xp is np else rain_rate.clamp(min=0.0)
        if self.kind == "log":
            return xp.log1p(r / self.r_ref) / math.log1p(self.r_max / self.r_ref)
        if self.kind == "identity":
            return r / self.r_max
        safe = xp.where(r >= self.threshold, r, self.threshold) if xp is np else r.clamp(min=self.threshold)
        z = (10.0 * xp.log10(safe) - self.db_zero) / (self.db_max - self.db_zero)
        return xp.where(r >= self.threshold, z, 0.0 * z)

    def inverse(self, z: Array) -> Array:
        """Model space -> mm/h (never negative)."""
        xp = torch if _is_torch(z) else np
        if self.kind == "log":
            r = self.r_ref * xp.expm1(z * math.log1p(self.r_max / self.r_ref))
        elif self.kind == "identity":
            r = z * self.r_max
        else:
            db = z * (self.db_max - self.db_zero) + self.db_zero
            r = xp.where(db >= self.db_min - 2.5, 10.0 ** (db / 10.0), 0.0 * z)
        return xp.clip(r, 0.0, None) if xp is np else r.clamp(min=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RainNormalizer:
        return cls(**state)
