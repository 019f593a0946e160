"""Where does an extrapolation lose its skill: the motion, or the small scales?

    python bench/extrapolation_methods.py [--store data/weights/train.zarr] [--products fmi mch knmi]
        [--methods lk3 lk2 lk4 lk3_cubic oracle smooth sprog linda anvil] [--stride 3] [--max-cases N]

Scores pysteps extrapolations on full grids, pooled over every ``--stride``-th init time with 4
observed frames and 12 x 5-min leads (windows across a gap skipped, and inits with under 1 % of the
last frame at 1 mm/h or more): CSI at 1 mm/h at 30 and 60 min and averaged over the leads. The
methods:

- ``lk3`` / ``lk2`` / ``lk4``: Lucas-Kanade motion from the last 3 / 2 / 4 frames, semi-Lagrangian
  advection of the last frame (``lk3`` is the ``optical_flow`` baseline);
- ``lk3_cubic``: the same with cubic interpolation in the advection;
- ``oracle``: Lucas-Kanade on the *observed* leads 5-7, i.e. the motion of the future: an upper
  bound on what better motion could give;
- ``smooth``: ``lk3`` blurred by 0.5 pixel per lead step (``optical_flow_smooth``);
- ``sprog``: pysteps S-PROG (the ``sprog`` baseline);
- ``linda``: pysteps LINDA, deterministic (no perturbations; ARI(1) in a Lagrangian frame with
  local growth and decay), on the last 3 frames: a candidate starting point for a hybrid. It needs
  scikit-image (``pip install scikit-image``, not a dependency of the project) and minutes per case;
- ``anvil``: pysteps ANVIL (a local autoregressive integrated model of growth and decay) on rain rate,
  the 4 frames: another candidate.

Run it on the training and validation days (the default store), never to choose on test events.
Forecast NaN (advected from outside the grid) counts as dry; pixels without an observation are
left out. Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np
import xarray as xr

from nowcast.models.baselines import smooth_by_lead
from pipelines.motion import to_dbr
from pipelines.pysteps_import import quiet, quiet_import

T_IN, T_OUT, THRESHOLD = 4, 12, 1.0


def _lk(frames: np.ndarray) -> np.ndarray:
    return quiet_import("pysteps.motion").get_method("LK")(to_dbr(frames), verbose=False)


def _advect(last: np.ndarray, velocity: np.ndarray, **kwargs: object) -> np.ndarray:
    with quiet():
        out = quiet_import("pysteps.nowcasts").get_method("extrapolation")(last, velocity, T_OUT, extrap_kwargs=kwargs)
    return np.asarray(out)


def _sprog(inputs: np.ndarray, _: np.ndarray) -> np.ndarray:
    from pipelines.motion import sprog

    return sprog(inputs, T_OUT)


def _lagrangian_ari(method: str, inputs: np.ndarray) -> np.ndarray:
    """pysteps' LINDA (deterministic) or ANVIL on mm/h, nodata read as dry, motion as ``optical_flow``'s."""
    rain = np.nan_to_num(inputs, nan=0.0)
    velocity = _lk(inputs[-3:])
    nowcasts = quiet_import("pysteps.nowcasts")
    with quiet():
        if method == "linda":
            out = nowcasts.get_method("linda")(rain[-3:], velocity, T_OUT, add_perturbations=False, kmperpixel=1.0,
                                               timestep=5, num_workers=2, ari_order=1)
        else:
            out = nowcasts.get_method("anvil")(rain, velocity, T_OUT, ar_order=2, num_workers=2)
    return np.asarray(out)


#: name -> (observed inputs [T_IN, y, x], observed leads [T_OUT, y, x]) -> forecast [T_OUT, y, x]
METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "lk3": lambda inp, obs: _advect(inp[-1], _lk(inp[-3:])),
    "lk2": lambda inp, obs: _advect(inp[-1], _lk(inp[-2:])),
    "lk4": lambda inp, obs: _advect(inp[-1], _lk(inp)),
    "lk3_cubic": lambda inp, obs: _advect(inp[-1], _lk(inp[-3:]), interp_order=3),
    "oracle": lambda inp, obs: _advect(inp[-1], _lk(obs[4:7])),
    "smooth": lambda inp, obs: smooth_by_lead(_advect(inp[-1], _lk(inp[-3:]))),
    "sprog": _sprog,
    "linda": lambda inp, obs: _lagrangian_ari("linda", inp),
    "anvil": lambda inp, obs: _lagrangian_ari("anvil", inp),
}


def contingency(forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """[T, y, x] each -> [T, 3] hits, false alarms, misses at THRESHOLD over the observed pixels."""
    valid = np.isfinite(observed)
    f = np.nan_to_num(forecast, nan=0.0) >= THRESHOLD
    o = np.nan_to_num(observed, nan=0.0) >= THRESHOLD
    return np.stack([(f & o & valid).sum(axis=(1, 2)), (f & ~o & valid).sum(axis=(1, 2)),
                     (~f & o & valid).sum(axis=(1, 2))], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="data/weights/train.zarr")
    parser.add_argument("--products", nargs="+", default=["fmi", "mch", "knmi"])
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m not in ("linda", "anvil")],
                        choices=list(METHODS), help="linda and anvil only when named (slow)")
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--max-cases", type=int, default=None, help="per product (a quick look)")
    args = parser.parse_args()
    counts = {m: np.zeros((T_OUT, 3)) for m in args.methods}
    cases = 0
    for product in args.products:
        ds = xr.open_zarr(args.store, group=product, consolidated=False)
        rain, times = ds["precip"].values.astype(np.float64), ds["time"].values
        span = np.timedelta64(5 * (T_IN + T_OUT - 1), "m")
        taken = 0
        for i in range(T_IN, len(times) - T_OUT + 1, args.stride):
            if times[i + T_OUT - 1] - times[i - T_IN] != span or np.nanmean(rain[i - 1] >= THRESHOLD) < 0.01:
                continue
            if args.max_cases is not None and taken >= args.max_cases:
                break
            inputs, observed = rain[i - T_IN:i], rain[i:i + T_OUT]
            for method in args.methods:
                counts[method] += contingency(METHODS[method](inputs, observed), observed)
            taken += 1
            print(f"{product} {str(times[i - 1])[:16]}", file=sys.stderr, flush=True)
        cases += taken
    results = {}
    for method, c in counts.items():
        csi = c[:, 0] / np.maximum(c.sum(axis=1), 1)
        results[method] = {"csi_30min": round(float(csi[5]), 3), "csi_60min": round(float(csi[11]), 3),
                           "csi_mean": round(float(csi.mean()), 3)}
    print(json.dumps({"store": args.store, "products": args.products, "cases": cases, "stride": args.stride,
                      "threshold_mm_h": THRESHOLD, "methods": results}, indent=2))


if __name__ == "__main__":
    main()
