"""Motion-conditioned ("hybrid") networks: each plain network, correcting optical flow.

``convlstm_flow``, ``predrnn_flow`` and ``sa_convlstm_flow`` take the same arguments as their
plain versions plus ``normalization`` (the normaliser's dict, to run optical flow in mm/h when no
cached extrapolation is given). See ``nowcast.models.base.MotionConditioning`` for how the
extrapolation enters each network.
"""

from __future__ import annotations

from typing import Any

from nowcast.models.base import MotionConditioning
from nowcast.models.convlstm import ConvLSTM
from nowcast.models.predrnn import PredRNN
from nowcast.models.sa_convlstm import SAConvLSTM


def _hybrid(plain: type) -> type:
    class Hybrid(MotionConditioning, plain):
        def __init__(self, *args: Any, normalization: dict | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.normalization = normalization
            self.zero_init(self.output)

    Hybrid.__name__ = Hybrid.__qualname__ = f"{plain.__name__}Flow"
    Hybrid.__doc__ = f"{plain.__name__} that corrects the optical-flow extrapolation (see MotionConditioning)."
    return Hybrid


ConvLSTMFlow = _hybrid(ConvLSTM)
PredRNNFlow = _hybrid(PredRNN)
SAConvLSTMFlow = _hybrid(SAConvLSTM)
