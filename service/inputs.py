"""Where a forecast's input frames come from, and the checks they pass before a model sees them.

Three sources: inline JSON frames, the service's archive (product + time, optional bbox) and an
uploaded .npy or NetCDF file. Each gives ``Inputs`` (frames in mm/h with NaN = nodata, their step,
the init time and the grid when known); the routers only pick the source. Every check raises
``ApiError`` with a one-word code and a message that names the problem.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from pipelines import query
from pipelines.channels import AuxiliaryInputs, MissingChannel
from pipelines.grid import Grid
from pipelines.query import WindowUnavailable, contiguous_starts, parse_utc
from pipelines.store import ProductArchive
from service.errors import ApiError
from service.schemas import ForecastRequest
from service.serving import ServedModel
from service.settings import ServiceSettings


@dataclass
class Inputs:
    """Frames [T, H, W] in mm/h (NaN = nodata), ``step_minutes`` apart, the last valid at ``init``."""

    frames: np.ndarray
    step_minutes: float
    init: np.datetime64
    grid: Grid | None = None
    #: a multi-source model's auxiliary products, each [T, H, W] mm/h like ``frames`` (NaN = no value)
    auxiliary: dict[str, np.ndarray] | None = None
    #: the archive product these frames are, whole-grid: its forecasts are verified live
    product: str | None = None


def pick_model(models: dict[str, ServedModel], name: str) -> ServedModel:
    if name not in models:
        raise ApiError(404, "unknown_model", f"unknown model {name!r}; served models: {', '.join(models)}")
    return models[name]


def check_frames(frames: np.ndarray, model: ServedModel, settings: ServiceSettings, step: float | None = None
                 ) -> np.ndarray:
    if frames.ndim != 3:
        raise ApiError(422, "bad_shape", f"frames must be T x H x W, got {frames.ndim} dimension(s)")
    t, h, w = frames.shape
    if min(t, h, w) < 1:
        raise ApiError(422, "bad_shape", f"frames must not be empty, got shape {frames.shape}")
    if h * w > settings.max_grid_pixels:
        side = int(settings.max_grid_pixels ** 0.5)
        raise ApiError(422, "grid_too_large", f"grid {h}x{w} has {h * w} pixels, over the maximum "
                                              f"{settings.max_grid_pixels} (max_grid_pixels): for a product, ask "
                                              f"for a bbox [x0, y0, x1, y1] in its CRS of at most {side}x{side} "
                                              "pixels (GET /v1/products gives its grid); else send a smaller grid")
    needed = model.forecaster.frames_needed(step)
    if t < needed:
        raise ApiError(422, "too_few_frames", f"model {model.name!r} needs {needed} input frames, got {t}")
    if np.isinf(frames).any():
        raise ApiError(422, "not_finite", "frames contain infinite values; send nodata as null (JSON) or NaN")
    if np.isnan(frames[-1]).all():
        raise ApiError(422, "all_nodata", "the last frame is nodata everywhere: there is nothing to forecast from")
    if (frames < 0).any():
        raise ApiError(422, "negative_rain", "frames contain negative rain rates; values are mm/h >= 0")
    return frames[-needed:].astype(np.float32)


def check_model_grid(model: ServedModel, h: int, w: int, lead_steps: int, settings: ServiceSettings) -> None:
    """Refuse, before any compute, a grid over the model's own limit (``ServedModel.pixel_limit``): on
    a CPU, what its measured cost lets it forecast within ``inference_timeout_s`` at these leads, so
    that the answer is a 422 naming the limit and its setting at once, not a 504 a minute later."""
    limit, limited_by = model.pixel_limit(settings, lead_steps)
    if h * w <= limit:
        return
    if limited_by == "model_max_grid_pixels":
        why = f"the service setting model_max_grid_pixels allows {model.name!r} at most {limit} pixels"
    else:
        why = (f"on this CPU {model.name!r} would not forecast {lead_steps} leads of more than {limit} pixels "
               f"within half of inference_timeout_s ({settings.inference_timeout_s:g} s), by its measured cost "
               "(docs/performance.md); raise inference_timeout_s, or set model_max_grid_pixels for it")
    side = int(limit ** 0.5)
    raise ApiError(422, "grid_too_large", f"grid {h}x{w} has {h * w} pixels: {why}; for a product, ask for a bbox "
                                          f"[x0, y0, x1, y1] of at most {side}x{side} pixels, or for fewer leads")


def check_auxiliary(inputs: Inputs, model: ServedModel, kept: int) -> dict[str, np.ndarray] | None:
    """The auxiliary frames a multi-source model reads, each shaped like the frames (last ``kept``
    of them); a missing product is refused with its name, an unknown one too."""
    needed = model.forecaster.input_products
    given = inputs.auxiliary or {}
    unknown = sorted(set(given) - set(needed))
    if unknown:
        reads = ", ".join(needed) if needed else "no auxiliary product"
        raise ApiError(422, "unknown_channel", f"model {model.name!r} reads {reads}; got {', '.join(unknown)}")
    if not needed:
        return None
    out = {}
    for product in needed:
        if product not in given:
            raise ApiError(422, "missing_channel",
                           f"model {model.name!r} reads auxiliary product {product!r} beside the frames; give it "
                           f"under 'auxiliary' ({{\"{product}\": T x H x W}}), or ask by 'product' so the "
                           "service reads it from its archive")
        try:
            frames = np.asarray(given[product], dtype=np.float64)
        except ValueError as exc:
            raise ApiError(422, "bad_shape", f"auxiliary {product!r} must be a regular T x H x W array") from exc
        if frames.shape != inputs.frames.shape:
            raise ApiError(422, "bad_shape", f"auxiliary {product!r} has shape {frames.shape}; it must match the "
                                             f"frames' {inputs.frames.shape} (same grid, same times)")
        if np.isinf(frames).any() or (frames < 0).any():
            raise ApiError(422, "negative_rain", f"auxiliary {product!r} holds negative or infinite values")
        out[product] = frames[-kept:].astype(np.float32)
    return out


def check_lead(lead_steps: int, settings: ServiceSettings) -> None:
    if lead_steps > settings.max_lead_steps:
        raise ApiError(422, "lead_too_long", f"lead_steps {lead_steps} is over the maximum {settings.max_lead_steps}")


def check_step(step: float, model: ServedModel) -> None:
    """Other steps are resampled in time (LoadedForecaster.predict); only far-off ones are refused."""
    try:
        query.check_step(step, model.forecaster.step_minutes, model.name)
    except WindowUnavailable as exc:
        raise ApiError(422, exc.code, str(exc)) from exc


def inline_inputs(body: ForecastRequest, model: ServedModel) -> Inputs:
    """Inline JSON frames; the step from ``step_minutes`` (or the model's), checked against ``times``."""
    try:
        frames = np.asarray(body.frames, dtype=np.float64)
    except ValueError as exc:
        raise ApiError(422, "bad_shape", "frames must be a regular T x H x W array (rows of equal length)") from exc
    step = body.step_minutes or model.forecaster.step_minutes
    if step is None:
        raise ApiError(422, "missing_step", "step_minutes is required for inline frames with this model")
    check_step(step, model)
    if body.times is not None:
        if len(body.times) != frames.shape[0]:
            raise ApiError(422, "bad_times", f"{len(body.times)} times for {frames.shape[0]} frames")
        times = np.array([parse_utc(t) for t in body.times])
        if not len(contiguous_starts(times, len(times), step)):
            raise ApiError(422, "uneven_times", f"frames are not evenly spaced at {step:g} minutes")
        if parse_utc(body.end_time) != parse_utc(body.times[-1]):
            raise ApiError(422, "bad_times", "end_time must be the time of the last frame")
    return Inputs(frames, step, parse_utc(body.end_time), auxiliary=body.auxiliary)


def archive_inputs(archive: ProductArchive, body: ForecastRequest, model: ServedModel) -> Inputs:
    """The frames the model needs up to ``body.time`` (default the latest), inside ``body.bbox``.
    Reads the archive: run it off the event loop."""
    try:
        window = archive.window(end=body.time, bbox=body.bbox, frames_needed=model.forecaster.frames_needed)
    except WindowUnavailable as exc:
        raise ApiError(422, exc.code, str(exc)) from exc
    check_step(window.step_minutes, model)
    inputs = Inputs(window.frames, window.step_minutes, window.end, window.grid,  # nodata stays NaN
                    product=archive.product if body.bbox is None else None)
    if model.forecaster.auxiliary:
        inputs.auxiliary = archive_auxiliary(archive, body, model, window.times)
    return inputs


def archive_auxiliary(archive: ProductArchive, body: ForecastRequest, model: ServedModel,
                      times: np.ndarray) -> dict[str, np.ndarray]:
    """A multi-source model's auxiliary products at the window's times, on its (cropped) grid."""
    grid = archive.grid()
    rows, cols = query.bbox_slices(grid, body.bbox) if body.bbox else (slice(None), slice(None))
    try:
        return AuxiliaryInputs(archive.store, model.forecaster.auxiliary, grid).read(times, rows, cols)
    except MissingChannel as exc:
        raise ApiError(422, "missing_channel", f"model {model.name!r} reads auxiliary product {exc.product!r}, "
                                               "which the service's archive does not hold") from exc


#: dtypes an uploaded array may have: real numbers (bool, complex, dates, records, objects are not rain)
UPLOAD_KINDS = "fiu"


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, filename: str, settings: ServiceSettings) -> None:
    """Refuse on the header alone: nothing is decoded for a shape the service would refuse."""
    if dtype.kind not in UPLOAD_KINDS or dtype.fields is not None:
        raise ApiError(422, "bad_dtype", f"{filename}: values must be real numbers (mm/h), got dtype {dtype}")
    if len(shape) != 3:
        raise ApiError(422, "bad_shape", f"{filename}: frames must be T x H x W, got shape {tuple(shape)}")
    t, h, w = (int(n) for n in shape)
    if h * w > settings.max_grid_pixels:
        raise ApiError(422, "grid_too_large", f"{filename}: grid {h}x{w} is over the maximum of "
                                              f"{settings.max_grid_pixels} pixels")
    if t > settings.max_input_frames:
        raise ApiError(422, "too_many_frames", f"{filename}: {t} frames, over the maximum of "
                                               f"{settings.max_input_frames}")


def _read_npy(data: bytes, filename: str, settings: ServiceSettings, keep_last: int) -> np.ndarray:
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(stream, max_header_size=10_000)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ApiError(422, "bad_file", f"{filename}: not a readable .npy header ({str(exc)[:200]})") from exc
    _check_declared(shape, dtype, filename, settings)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - stream.tell() != expected:
        raise ApiError(422, "bad_file", f"{filename}: the header declares {tuple(shape)} {dtype} "
                                        f"({expected} bytes) but {len(data) - stream.tell()} bytes follow")
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")[-keep_last:].astype(np.float64)


def _read_netcdf(data: bytes, filename: str, settings: ServiceSettings, keep_last: int
                 ) -> tuple[np.ndarray, Grid | None]:
    import tempfile
    from pathlib import Path

    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.nc"
        path.write_bytes(data)
        try:
            ds = xr.open_dataset(path, engine="netcdf4", decode_times=False, mask_and_scale=True)
        except Exception as exc:
            raise ApiError(422, "bad_file", f"{filename}: not a readable NetCDF ({str(exc)[:200]})") from exc
        with ds:
            if "precip" not in ds or set(ds["precip"].dims) != {"time", "y", "x"}:
                raise ApiError(422, "bad_file", f"{filename}: needs a variable precip(time, y, x)")
            precip = ds["precip"].transpose("time", "y", "x")
            # the declared shape, before decompressing: a small file can hold gigabytes of zeros
            _check_declared(precip.shape, ds["precip"].encoding.get("dtype", precip.dtype), filename, settings)
            try:
                frames = precip.isel(time=slice(-keep_last, None)).values.astype(np.float64)
                grid = Grid.from_dataset(ds) if "crs" in ds and "proj4" in ds["crs"].attrs else None
            except Exception as exc:
                raise ApiError(422, "bad_file", f"{filename}: unreadable precip ({str(exc)[:200]})") from exc
    return frames, grid


def read_upload(data: bytes, filename: str, settings: ServiceSettings, keep_last: int
                ) -> tuple[np.ndarray, Grid | None]:
    """A .npy array (T x H x W, mm/h) or a NetCDF with ``precip`` (time, y, x); only the last
    ``keep_last`` frames (what the model reads) are decoded. Runs off the event loop."""
    if data[:6] == b"\x93NUMPY":
        return _read_npy(data, filename, settings, keep_last), None
    if data[:4] in (b"CDF\x01", b"CDF\x02", b"\x89HDF"):
        return _read_netcdf(data, filename, settings, keep_last)
    raise ApiError(422, "bad_file", f"{filename}: upload a .npy array or a NetCDF file")


def upload_inputs(data: bytes, filename: str, model: ServedModel, settings: ServiceSettings,
                  step_minutes: float | None, end_time: datetime) -> Inputs:
    """An uploaded file's frames; only the ones the model reads are decoded. Run it off the event loop."""
    step = step_minutes or model.forecaster.step_minutes
    if step is not None:
        check_step(step, model)  # before decoding anything
    frames, grid = read_upload(data, filename, settings, model.forecaster.frames_needed(step))
    if step is None:  # after the file: a file that is no forecast input is the first thing to hear about
        raise ApiError(422, "missing_step", "step_minutes is required with this model")
    if frames.ndim == 3 and grid is not None and grid.shape != frames.shape[1:]:
        grid = None
    return Inputs(frames, step, parse_utc(end_time), grid)
