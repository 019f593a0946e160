"""Model registry: every forecaster, deep or baseline, by name.

All share one interface (``nowcast.models.base.Forecaster``): normalised input
``[B, T_in, C, H, W]`` in, ``[B, T_out, C, H, W]`` out for any requested ``T_out``.
A new model is one module plus one line in ``MODELS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from nowcast.models.base import Forecaster

MODELS: dict[str, str] = {
    "convlstm": "nowcast.models.convlstm:ConvLSTM",
    "predrnn": "nowcast.models.predrnn:PredRNN",
    "sa_convlstm": "nowcast.models.sa_convlstm:SAConvLSTM",
    "convlstm_flow": "nowcast.models.motion:ConvLSTMFlow",
    "predrnn_flow": "nowcast.models.motion:PredRNNFlow",
    "sa_convlstm_flow": "nowcast.models.motion:SAConvLSTMFlow",
    "convlstm_sprog": "nowcast.models.motion:ConvLSTMSProg",
    "convlstm_exceedance": "nowcast.models.exceedance:ConvLSTMExceedance",
    "convlstm_sprog_exceedance": "nowcast.models.exceedance_hybrid:ConvLSTMSProgExceedance",
    "persistence": "nowcast.models.baselines:Persistence",
    "optical_flow": "nowcast.models.baselines:OpticalFlow",
    "optical_flow_smooth": "nowcast.models.baselines:OpticalFlowSmooth",
    "sprog": "nowcast.models.baselines:SProg",
    "steps": "nowcast.models.steps:Steps",
}
BASELINES = ("persistence", "optical_flow", "optical_flow_smooth", "sprog", "steps")
#: baselines that run in mm/h and so take the normaliser's dict as ``normalization``
MOTION_BASELINES = ("optical_flow", "optical_flow_smooth", "sprog", "steps")


def model_class(name: str) -> type[Forecaster]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    module, _, attr = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_model(name: str, **kwargs: Any) -> Forecaster:
    """Build a registered model; ``kwargs`` are its constructor arguments."""
    return model_class(name)(**kwargs)
