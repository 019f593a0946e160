"""The trained models as pysteps nowcast methods.

pysteps nowcast methods are plain functions ``forecast(precip, velocity, timesteps, **kwargs)``
returning ``[timesteps, H, W]``. These wrap ``nowcast.forecaster``: ``precip`` is the
``[T, H, W]`` history in mm/h (NaN = nodata), ``velocity`` is ignored (the networks learn the
motion), and ``checkpoint=`` picks a trained model (default: the shipped weights). A
multi-source checkpoint (``pipelines.channels``) also takes ``auxiliary={product: [T, H, W]}``:
its auxiliary products on ``precip``'s grid at ``precip``'s times (NaN where none); a missing
one is refused with its name. ``n_ens_members=N`` asks a model that offers an ensemble
(``LoadedForecaster.outputs``) for ``[N, timesteps, H, W]``, as pysteps' own ensemble methods answer;
``nowcast_steps`` is the ``steps`` baseline this way (for comparing with pysteps' STEPS itself).

They are declared under the ``pysteps.plugins.nowcasts`` entry-point group; pysteps releases
that discover nowcast plugins pick them up from there. For pysteps versions whose
``nowcasts.get_method`` does not look at entry points yet (1.21 among them), ``register()``
adds them to its method table, so ``pysteps.nowcasts.get_method("nowcast_convlstm")`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from nowcast.forecaster import LoadedForecaster, load_forecaster
from pipelines.pysteps_import import quiet_import

PREFIX = "nowcast_"


@cache
def _load(spec: str) -> LoadedForecaster:
    return load_forecaster(spec)


def _method(default_model: str) -> Callable[..., np.ndarray]:
    def forecast(
        precip: np.ndarray, velocity: Any = None, timesteps: int | list[float] | None = None,
        checkpoint: str | None = None, auxiliary: dict[str, np.ndarray] | None = None,
        n_ens_members: int | None = None, **_: Any,
    ) -> np.ndarray:
        forecaster = _load(checkpoint or default_model)
        if timesteps is None:
            timesteps = forecaster.default_lead_steps
        if not isinstance(timesteps, int):
            if list(timesteps) != list(range(1, len(timesteps) + 1)):
                raise ValueError("only whole, consecutive time steps are supported (pass an int)")
            timesteps = len(timesteps)
        expected = _load(default_model).architecture if checkpoint else forecaster.architecture
        if forecaster.architecture != expected:
            raise ValueError(f"{checkpoint} holds a {forecaster.architecture!r} network, not {expected!r} "
                             f"({default_model}): use pysteps.nowcasts.get_method('{PREFIX}{forecaster.architecture}')"
                             " for it")
        if n_ens_members is not None:  # pysteps' ensemble convention: [members, timesteps, H, W]
            if "ensemble" not in forecaster.outputs:
                raise ValueError(f"{forecaster.name} forecasts {', '.join(forecaster.outputs)} output, no ensemble "
                                 "(n_ens_members); GET /v1/models and LoadedForecaster.outputs say which do")
            return forecaster.predict_ensemble(np.asarray(precip, dtype=np.float32), timesteps, n_ens_members)
        return forecaster.predict(np.asarray(precip, dtype=np.float32), timesteps, auxiliary=auxiliary)

    forecast.__name__ = f"{PREFIX}{default_model}"
    forecast.__doc__ = f"pysteps-style nowcast with the {default_model} network (see nowcast.pysteps_plugin)."
    return forecast


convlstm = _method("convlstm")
predrnn = _method("predrnn")
sa_convlstm = _method("sa_convlstm")
convlstm_flow = _method("convlstm_flow")
predrnn_flow = _method("predrnn_flow")
sa_convlstm_flow = _method("sa_convlstm_flow")
convlstm_sprog = _method("convlstm_sprog")
convlstm_taasrad19 = _method("convlstm_taasrad19")
predrnn_taasrad19 = _method("predrnn_taasrad19")
sa_convlstm_taasrad19 = _method("sa_convlstm_taasrad19")
convlstm_exceedance_taasrad19 = _method("convlstm_exceedance_taasrad19")  # its field: the rate exceeded at p=0.2
convlstm_sprog_taasrad19 = _method("convlstm_sprog_taasrad19")
convlstm_flow_taasrad19 = _method("convlstm_flow_taasrad19")
convlstm_exceedance = _method("convlstm_exceedance")  # the 1 km probabilistic network
convlstm_sprog_exceedance = _method("convlstm_sprog_exceedance")  # the S-PROG hybrid's probabilities (1 km)
convlstm_pretrained = _method("convlstm_pretrained")
predrnn_pretrained = _method("predrnn_pretrained")
steps = _method("steps")
METHODS = {
    f.__name__: f
    for f in (convlstm, predrnn, sa_convlstm, convlstm_flow, predrnn_flow, sa_convlstm_flow, convlstm_sprog,
              convlstm_taasrad19, predrnn_taasrad19, sa_convlstm_taasrad19, convlstm_exceedance_taasrad19,
              convlstm_sprog_taasrad19, convlstm_flow_taasrad19, convlstm_exceedance, convlstm_sprog_exceedance,
              convlstm_pretrained, predrnn_pretrained, steps)
}


def register() -> list[str]:
    """Add the methods to pysteps' nowcast table (for pysteps without nowcast plugin discovery)."""
    interface = quiet_import("pysteps.nowcasts.interface")
    interface._nowcast_methods.update(METHODS)
    return sorted(METHODS)
