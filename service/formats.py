"""A forecast in the format the client asks for: JSON, CF NetCDF, GIF or PNG."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from pipelines.cf import VARIABLE, rain_rate_dataset
from pipelines.grid import Grid

MEDIA_TYPES = ("application/json", "application/x-netcdf", "image/gif", "image/png")


@dataclass
class Forecast:
    model: str
    #: [lead, H, W] mm/h; "probability": [lead, threshold, H, W] 0..1; "ensemble": [member, lead, H, W] mm/h
    frames: np.ndarray
    init_time: np.datetime64
    step_minutes: float
    grid: Grid | None  # None for inline frames (pixel grid, no CRS)
    output: str = "deterministic"
    thresholds: tuple[float, ...] = ()  # probability: mm/h
    members: int | None = None  # probability: members counted over (None: the model's own probabilities)
    identity: str | None = None  # the model's name@fingerprint (ServedModel.identity)

    @property
    def lead_steps(self) -> int:
        return self.frames.shape[1] if self.output == "ensemble" else self.frames.shape[0]

    @property
    def times(self) -> list[np.datetime64]:
        step = np.timedelta64(int(round(self.step_minutes * 60)), "s")
        return [self.init_time + step * (k + 1) for k in range(self.lead_steps)]

    def iso_times(self) -> list[str]:
        return [str(t.astype("datetime64[s]")) + "Z" for t in self.times]


def negotiate(accept: str | None) -> str | None:
    """The first supported media type in Accept (JSON for none or */*); None if nothing fits."""
    if not accept:
        return "application/json"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "application/json"):
            return "application/json"
        if media in MEDIA_TYPES:
            return media
        if media == "image/*":
            return "image/png"
    return None


class NumpyJSONResponse(JSONResponse):
    """JSON via orjson, which writes numpy arrays directly: ~10x faster than the standard
    library on forecast-sized frame lists, and this runs on the event loop."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def to_json(forecast: Forecast) -> dict:
    frames = np.round(forecast.frames.astype(np.float32), 3)
    grid = {"ny": int(frames.shape[-2]), "nx": int(frames.shape[-1])}
    if forecast.grid is not None:
        grid |= {"crs": forecast.grid.crs_proj, "x": forecast.grid.x.tolist(), "y": forecast.grid.y.tolist()}
    body = {
        "model": forecast.model,
        "identity": forecast.identity,
        "units": "mm/h",
        "init_time": str(forecast.init_time.astype("datetime64[s]")) + "Z",
        "step_minutes": forecast.step_minutes,
        "lead_minutes": [forecast.step_minutes * (k + 1) for k in range(forecast.lead_steps)],
        "times": forecast.iso_times(),
    }
    if forecast.output == "probability":  # schemas.ProbabilityForecastResponse
        return {**body, "output": "probability", "thresholds": list(forecast.thresholds),
                "members": forecast.members, "probabilities": frames, "grid": grid}
    if forecast.output == "ensemble":  # schemas.EnsembleForecastResponse
        return {**body, "output": "ensemble", "members": frames, "grid": grid}
    return {**body, "frames": frames, "grid": grid}


def to_netcdf(forecast: Forecast) -> bytes:
    """CF NetCDF-4: precip(time, y, x) in mm/h, with the CRS when the frames came from the archive;
    probability_of_exceedance(time, threshold, y, x) or precip(realization, time, y, x) for the other outputs."""
    times = np.array(forecast.times, dtype="datetime64[ns]")
    coords = {"time": ("time", times, {"standard_name": "time"})}
    dims = ("time", "y", "x")
    if forecast.output == "probability":
        dims = ("time", "threshold", "y", "x")
        coords["threshold"] = ("threshold", np.asarray(forecast.thresholds, dtype=np.float32),
                               {"standard_name": "rainfall_rate", "long_name": "rain rate threshold",
                                "units": "mm/h", "spp__relative_to_threshold": "greater_than_or_equal_to"})
    elif forecast.output == "ensemble":
        dims = ("realization", "time", "y", "x")
        coords["realization"] = ("realization", np.arange(forecast.frames.shape[0], dtype=np.int32),
                                 {"standard_name": "realization", "long_name": "ensemble member"})
    ds = rain_rate_dataset(
        forecast.frames.astype(np.float32), dims, coords,
        forecast.grid, "forecast rain rate",
        {"title": f"{forecast.model} nowcast",
         "forecast_reference_time": str(forecast.init_time.astype("datetime64[s]")) + "Z",
         **({"model_identity": forecast.identity} if forecast.identity else {})},
    )
    if forecast.output == "probability":  # not a rain rate: the same layout, another variable
        ds = ds.rename({VARIABLE: "probability_of_exceedance"})
        ds["probability_of_exceedance"].attrs = {
            "long_name": "probability of rain rate at or above threshold", "units": "1", "valid_min": 0.0,
            "valid_max": 1.0, **({"grid_mapping": "crs"} if forecast.grid is not None else {}),
            **({"ensemble_members": forecast.members} if forecast.members else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecast.nc"
        ds.to_netcdf(path, engine="netcdf4", encoding={"time": {"units": "seconds since 1970-01-01"}})
        return path.read_bytes()


def _init(forecast: Forecast) -> str:
    """The init time (last observation) in UTC, as pictures label it."""
    return str(forecast.init_time.astype("datetime64[m]")).replace("T", " ") + " UTC"


def to_gif(forecast: Forecast) -> bytes:
    from nowcast.plots import animate_panels

    buffer = io.BytesIO()
    minutes = [forecast.step_minutes * (k + 1) for k in range(len(forecast.frames))]
    animate_panels({forecast.model: forecast.frames}, minutes, f"{forecast.model} init {_init(forecast)}", buffer)
    return buffer.getvalue()


def to_png(forecast: Forecast) -> bytes:
    from nowcast.plots import montage

    buffer = io.BytesIO()
    minutes = [forecast.step_minutes * (k + 1) for k in range(len(forecast.frames))]
    montage(forecast.frames, [f"+{m:g} min" for m in minutes], f"{forecast.model} nowcast, init {_init(forecast)}",
            buffer)
    return buffer.getvalue()
