"""A radar + satellite training pair built from real frames, with a relation that is known.

The sample data hold satellite CRR (2018-06-01) and radar from other days, so no real
co-located pair exists. To prove that a multi-source model reads its auxiliary channel, this
builds one whose answer is known:

- the *target* product: real CRR frames regridded (bilinear) onto a real radar grid, at the
  satellite's valid times;
- the *auxiliary* product: the same real CRR frames on their own geostationary grid, filed
  ``lead_steps`` steps *earlier*. Aligned and regridded by ``pipelines.channels``, the
  auxiliary frame at time t is the target at t + lead: a perfect "sees it before it rains"
  channel, like a satellite that sees convection before the radar does.

A model given the auxiliary channel can therefore forecast the first lead(s) exactly, and its
loss must fall below what the target alone reaches; a model that ignores it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.frame import Frame
from pipelines.regrid import regrid
from pipelines.store import ProductArchive


@dataclass(frozen=True)
class PairedSample:
    target: str
    auxiliary: str
    frames: int
    step_minutes: float
    lead_minutes: float


def write_paired_sample(store: str, source: str, grid_of_product: str, target: str, auxiliary: str,
                        lead_steps: int = 1) -> PairedSample:
    """Write ``target`` (``source`` regridded onto ``grid_of_product``'s grid) and ``auxiliary``
    (``source`` ``lead_steps`` steps early, on its own grid) into ``store``."""
    archive = ProductArchive(store, source)
    step = archive.step_minutes()
    if step is None:
        raise ValueError(f"product {source!r} needs at least two frames")
    grid = ProductArchive(store, grid_of_product).grid()
    shift = np.timedelta64(int(round(lead_steps * step * 60)), "s")
    with archive.open() as ds:
        own_grid = archive.grid()
        times = ds["time"].values.astype("datetime64[s]")
        on_target = regrid(ds, grid, "bilinear")
        attrs = {"provider": "nowcast paired sample", "source_product": f"{source} regridded onto {grid_of_product}",
                 "conversion": "none (mm/h)"}
        early = {"provider": "nowcast paired sample", "source_product": f"{source} filed {lead_steps} step(s) early",
                 "conversion": "none (mm/h)"}
        target_frames, auxiliary_frames = [], []
        for i, time in enumerate(times):
            target_frames.append(Frame(time, on_target[i].values.astype(np.float32), grid, attrs,
                                       f"{source}@{time}Z regridded"))
            auxiliary_frames.append(Frame(time - shift, ds["precip"][i].values.astype(np.float32), own_grid, early,
                                          f"{source}@{time}Z early"))
    ProductArchive(store, target).write(target_frames)
    ProductArchive(store, auxiliary).write(auxiliary_frames)
    return PairedSample(target, auxiliary, len(times), step, lead_steps * step)
