"""The archive's products for clients that draw them (the viewer at ``/`` is the first).

GET /v1/products: what each product is (time range, step, grid, a lat/lon graticule) and the
rain-rate and probability colour scales; GET /v1/products/{product}/times: its valid times; GET
/v1/products/{product}/frame: one observed frame as a PNG; POST /v1/forecast/frames: the
forecast of POST /v1/forecast (same body) as one PNG per lead, because the JSON of a full
radar grid is tens of megabytes and the montage PNG cannot be animated; with ``"output":
"probability"`` and one threshold, the map of P(rate >= threshold) per lead (the viewer's
probability panel), for the same reason.

Frame PNGs have one pixel per grid cell (row 0 = north), coloured with ``pipelines.plots``'
scales: transparent where dry (probability: under 0.1), grey where nodata, so a client lays them
over any background; nodata stays grey in a probability map, never a probability of 0.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from functools import lru_cache
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from pipelines.grid import Grid
from pipelines.integrity import DamagedData
from pipelines.plots import (
    MAX_RAIN_MM_H,
    NODATA_COLOUR,
    PROBABILITY_COLOURS,
    PROBABILITY_LEVELS,
    RAIN_COLOURS,
    RAIN_LEVELS,
    rain_colormap,
)
from pipelines.query import parse_utc, time_step_minutes, utc_text
from pipelines.store import ProductArchive, list_products
from service.auth import require_api_key
from service.dependencies import get_archive, get_models, get_settings
from service.errors import ApiError
from service.inputs import archive_inputs, check_lead, inline_inputs, pick_model
from service.outputs import output_request
from service.routers.forecast import ERRORS, compute_forecast
from service.schemas import (
    YEARS,
    ColourScale,
    DamagedProductInfo,
    ErrorResponse,
    ForecastFramesResponse,
    ForecastRequest,
    GraticuleLine,
    ProbabilityScale,
    ProductGrid,
    ProductInfo,
    ProductsResponse,
    ProductTimesResponse,
)
from service.serving import ServedModel
from service.settings import ServiceSettings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)],
                   responses={401: {"model": ErrorResponse, "description": "missing or wrong API key"}})

NOT_FOUND = {404: {"model": ErrorResponse, "description": "unknown product, or no frame at that time"}}
PNG = {200: {"content": {"image/png": {}}, "description": "one frame: 1 pixel per grid cell, row 0 = north"}}
#: the most times one GET /v1/products/{product}/times answers (a day of 5-minute frames is 288)
MAX_TIMES = 5000


# -- pictures ------------------------------------------------------------------------------------


def _rgb(colour: str) -> tuple[int, int, int]:
    from matplotlib.colors import to_rgb

    return tuple(int(round(255 * c)) for c in to_rgb(colour))  # type: ignore[return-value]


def colour_scale() -> ColourScale:
    """The scale as ``pipelines.plots`` defines it (one source for every picture and legend)."""
    from matplotlib.colors import to_hex

    cmap, _ = rain_colormap()
    return ColourScale(levels=[float(v) for v in RAIN_LEVELS] + [float(MAX_RAIN_MM_H)],
                       colours=list(RAIN_COLOURS), max_mm_h=float(MAX_RAIN_MM_H),
                       over=to_hex(cmap.get_over()), nodata=to_hex(cmap.get_bad()))


@lru_cache(maxsize=1)
def _palette() -> tuple[bytes, bytes]:
    """PNG palette and its alpha: 0 dry (transparent), 1 nodata, 2.. the classes, last: over the scale."""
    scale = colour_scale()
    colours = [(255, 255, 255), _rgb(scale.nodata), *(_rgb(c) for c in scale.colours), _rgb(scale.over)]
    alpha = bytes([0] + [255] * (len(colours) - 1))
    return bytes(v for rgb in colours for v in rgb), alpha


def probability_scale() -> ProbabilityScale:
    """The probability maps' scale as ``pipelines.plots`` defines it."""
    return ProbabilityScale(levels=list(PROBABILITY_LEVELS), colours=list(PROBABILITY_COLOURS), nodata=NODATA_COLOUR)


@lru_cache(maxsize=1)
def _probability_palette() -> tuple[bytes, bytes]:
    """PNG palette and its alpha: 0 under the first level (transparent), 1 nodata, 2.. the classes."""
    colours = [(255, 255, 255), _rgb(NODATA_COLOUR), *(_rgb(c) for c in PROBABILITY_COLOURS)]
    return bytes(v for rgb in colours for v in rgb), bytes([0] + [255] * (len(colours) - 1))


def probability_png(probability: np.ndarray) -> bytes:
    """One probability field (0..1, NaN = nodata) as a paletted PNG, like ``rain_png``: classes of 0.1,
    blank under 0.1, grey where there is no radar (nodata is not a probability of 0)."""
    field = np.asarray(probability, dtype=np.float32)
    top = len(PROBABILITY_COLOURS) + 1  # the last class holds 1 itself
    index = np.minimum(np.digitize(np.nan_to_num(field, nan=0.0), PROBABILITY_LEVELS) + 1, top).astype(np.uint8)
    index[index == 1] = 0  # under the first level
    index[np.isnan(field)] = 1
    return _paletted_png(index, *_probability_palette())


def rain_png(rain_rate: np.ndarray) -> bytes:
    """One rain-rate field (mm/h, NaN = nodata) as a paletted PNG: small (a 1226 x 760 FMI frame is
    tens of kB) and exact colours, so a client can scale it without blending classes."""
    # float32: the archive keeps hundredths, and 1.00 mm/h decodes to 0.99999998 in float64 (the class below)
    field = np.asarray(rain_rate, dtype=np.float32)
    index = (np.digitize(np.nan_to_num(field, nan=0.0), RAIN_LEVELS) + 1).astype(np.uint8)  # 1 = dry for now
    index[index == 1] = 0
    index[field >= MAX_RAIN_MM_H] = len(RAIN_COLOURS) + 2
    index[np.isnan(field)] = 1
    return _paletted_png(index, *_palette())


def _paletted_png(index: np.ndarray, palette: bytes, alpha: bytes) -> bytes:
    """Class indices (uint8, row 0 = north) with their palette and per-entry alpha as PNG bytes."""
    from PIL import Image

    image = Image.fromarray(index, mode="P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=alpha, optimize=False, compress_level=6)
    return buffer.getvalue()


# -- grids ---------------------------------------------------------------------------------------


def _nice_step(span: float) -> float:
    """A graticule spacing giving roughly 3 to 8 lines across ``span`` degrees."""
    for step in (0.5, 1, 2, 5, 10, 15, 20, 30):
        if span / step <= 8:
            return float(step)
    return 45.0


def _label(kind: str, value: float) -> str:
    hemisphere = ("N" if value >= 0 else "S") if kind == "lat" else ("E" if value >= 0 else "W")
    return f"{abs(value):g}°{hemisphere}"


@lru_cache(maxsize=32)
def _grid_geometry(crs_proj: str, x0: float, dx: float, nx: int, y0: float, dy: float, ny: int
                   ) -> tuple[dict[str, list[float] | None], list[GraticuleLine]]:
    """Corner lon/lat and graticule of a grid whose top-left outer corner is (x0, y0), pixels dx by dy.
    Cached: products keep their grid for life, and the viewer asks every 30 s."""
    from pyproj import CRS, Transformer

    crs = CRS.from_proj4(crs_proj)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def lonlat(cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = to_lonlat.transform(x0 + cols * dx, y0 - rows * dy, errcheck=False)
        return np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)

    corners = {}
    for name, (c, r) in {"top_left": (0, 0), "top_right": (nx, 0), "bottom_left": (0, ny),
                         "bottom_right": (nx, ny)}.items():
        lon, lat = lonlat(np.array([c], float), np.array([r], float))
        ok = np.isfinite(lon[0]) and np.isfinite(lat[0]) and abs(lat[0]) <= 90
        corners[name] = [round(float(lon[0]), 5), round(float(lat[0]), 5)] if ok else None

    # the lon/lat range: sample the whole grid coarsely (edges alone miss a pole or a disk's limb)
    cols, rows = np.meshgrid(np.linspace(0, nx, 41), np.linspace(0, ny, 41))
    lon, lat = lonlat(cols.ravel(), rows.ravel())
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90)
    if not ok.any():
        return corners, []
    lon, lat = lon[ok], lat[ok]
    lines: list[GraticuleLine] = []
    for kind, low, high, other_low, other_high in (("lat", lat.min(), lat.max(), lon.min(), lon.max()),
                                                   ("lon", lon.min(), lon.max(), lat.min(), lat.max())):
        step = _nice_step(max(high - low, 1e-6))
        along = np.linspace(other_low, other_high, 200)
        for value in np.arange(np.ceil(low / step) * step, high + 1e-9, step):
            lons, lats = (along, np.full_like(along, value)) if kind == "lat" else (np.full_like(along, value), along)
            x, y = to_grid.transform(lons, lats, errcheck=False)
            c, r = (np.asarray(x) - x0) / dx, (y0 - np.asarray(y)) / dy
            good = np.isfinite(c) & np.isfinite(r)
            segments, current = [], []
            for ci, ri, g in zip(c, r, good, strict=True):
                if g:
                    current.append([round(float(ci), 2), round(float(ri), 2)])
                elif current:
                    segments.append(current)
                    current = []
            if current:
                segments.append(current)
            inside = good & (c >= 0) & (c <= nx) & (r >= 0) & (r <= ny)
            if not inside.any():
                continue
            # label where the line enters the grid: the left edge for parallels, the bottom for meridians
            k = np.nonzero(inside)[0][0] if kind == "lat" else np.nonzero(inside)[0][np.argmax(r[inside])]
            lines.append(GraticuleLine(kind=kind, value=round(float(value), 6), label=_label(kind, float(value)),
                                       segments=segments, label_at=[round(float(c[k]), 2), round(float(r[k]), 2)]))
    return corners, lines


def describe_product(archive: ProductArchive) -> ProductInfo:
    """Time range, step, grid and graticule of one product. Reads the archive: run it off the event loop."""
    with archive.open() as ds:
        times = ds["time"].values.astype("datetime64[s]")
        grid = Grid.from_dataset(ds)
    ny, nx = grid.shape
    dx, dy = grid.pixel_size if min(ny, nx) > 1 else (1.0, 1.0)
    x0, y0 = float(min(grid.x[0], grid.x[-1]) - dx / 2), float(max(grid.y[0], grid.y[-1]) + dy / 2)
    corners, graticule = _grid_geometry(grid.crs_proj, x0, dx, nx, y0, dy, ny)
    return ProductInfo(
        name=archive.product, frames=len(times),
        first_time=utc_text(times[0]) if len(times) else None, last_time=utc_text(times[-1]) if len(times) else None,
        step_minutes=time_step_minutes(times),
        grid=ProductGrid(ny=ny, nx=nx, crs=grid.crs_proj, units=grid.unit, dx=dx, dy=dy,
                         x_range=[x0, x0 + nx * dx], y_range=[y0 - ny * dy, y0], corners_lonlat=corners),
        graticule=graticule,
    )


def _check_year(value: datetime | None, name: str) -> None:
    if value is not None and not YEARS[0] <= value.year <= YEARS[1]:
        raise ApiError(422, "bad_times", f"{name} year {value.year} is outside {YEARS[0]}-{YEARS[1]}")


# -- routes --------------------------------------------------------------------------------------


@router.get("/products", response_model=ProductsResponse, tags=["products"],
            responses={503: {"model": ErrorResponse, "description": "the store cannot be read"}})
async def products(request: Request, settings: ServiceSettings = Depends(get_settings)) -> ProductsResponse:
    """Every product of the service's archive, newest time included: clients poll this to see new frames."""
    try:
        names = await run_in_threadpool(list_products, settings.store)
    except Exception as exc:  # an unreachable store is the service's problem, said as such
        raise ApiError(503, "store_unavailable", f"the archive {settings.store} cannot be read: "
                                                 f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    described, damaged = [], []
    for name in names:
        try:
            archive = get_archive(request, name)
            described.append(await run_in_threadpool(describe_product, archive))
        except ApiError:  # a product still being created: not there yet
            continue
        except DamagedData as exc:  # named, and the others are still listed
            damaged.append(DamagedProductInfo(name=name, error=str(exc)))
    return ProductsResponse(products=described, colour_scale=colour_scale(), probability_scale=probability_scale(),
                            damaged=damaged)


@router.get("/products/{product}/times", response_model=ProductTimesResponse, tags=["products"],
            responses={**NOT_FOUND, 422: {"model": ErrorResponse, "description": "invalid start, end or limit"}})
async def product_times(
    request: Request, product: str,
    start: Annotated[datetime | None, Query(description="Earliest valid time (UTC)")] = None,
    end: Annotated[datetime | None, Query(description="Latest valid time (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TIMES, description="Most times returned (the newest)")] = 288,
) -> ProductTimesResponse:
    """The valid times a client may ask frames and forecasts for (init times to pick from)."""
    _check_year(start, "start")
    _check_year(end, "end")
    archive = get_archive(request, product)
    times = await run_in_threadpool(archive.times)
    step = time_step_minutes(times)
    first, last = parse_utc(start), parse_utc(end)
    if first is not None:
        times = times[times >= first]
    if last is not None:
        times = times[times <= last]
    return ProductTimesResponse(product=product, step_minutes=step, times=[utc_text(t) for t in times[-limit:]],
                                truncated=len(times) > limit)


def _read_frame(archive: ProductArchive, wanted: np.datetime64 | None) -> tuple[np.datetime64, np.ndarray]:
    with archive.open() as ds:
        times = ds["time"].values.astype("datetime64[s]")
        if not len(times):
            raise ApiError(404, "no_frames", f"product {archive.product!r} has no frames yet")
        if wanted is None:
            index = len(times) - 1
        else:
            matches = np.nonzero(times == wanted)[0]
            if not len(matches):
                raise ApiError(404, "time_not_in_archive",
                               f"no frame of {archive.product!r} at {utc_text(wanted)} (frames from "
                               f"{utc_text(times[0])} to {utc_text(times[-1])}; GET /v1/products/"
                               f"{archive.product}/times lists them)")
            index = int(matches[0])
        return times[index], ds["precip"].isel(time=index).values


@router.get("/products/{product}/frame", response_class=Response, tags=["products"],
            responses={**PNG, **NOT_FOUND, 422: {"model": ErrorResponse, "description": "time is not a valid time"}})
async def product_frame(
    request: Request, product: str,
    time: Annotated[datetime | None, Query(description="Valid time (UTC); default: the latest frame")] = None,
) -> Response:
    """One observed frame as a PNG in the rain-rate colour scale (transparent: dry; grey: nodata)."""
    _check_year(time, "time")
    archive = get_archive(request, product)
    valid, field = await run_in_threadpool(_read_frame, archive, parse_utc(time))
    png = await run_in_threadpool(rain_png, field)
    # a stored frame never changes (frames are keyed by valid time); the latest one may be replaced by a newer
    cache = "private, max-age=3600" if time is not None else "no-cache"
    return Response(png, media_type="image/png", headers={"X-Valid-Time": utc_text(valid), "Cache-Control": cache})


@router.post("/forecast/frames", response_model=ForecastFramesResponse, tags=["forecast"],
             responses={k: v for k, v in ERRORS.items() if k != 406})
async def forecast_frames(
    request: Request, body: ForecastRequest,
    settings: ServiceSettings = Depends(get_settings), models: dict[str, ServedModel] = Depends(get_models),
) -> ForecastFramesResponse:
    """POST /v1/forecast's forecast (same body, same checks) as one PNG per lead, for animating; with
    ``"output": "probability"`` and one threshold, the map of P(rate >= threshold) per lead."""
    model = pick_model(models, body.model)
    check_lead(body.lead_steps, settings)
    if body.output == "ensemble" or (body.output == "probability" and len(body.thresholds or []) != 1):
        raise ApiError(422, "bad_output", "forecast frames are pictures of the deterministic forecast, or of the "
                                          "probability of one threshold (\"output\": \"probability\", "
                                          "\"thresholds\": [1]); ask POST /v1/forecast for more thresholds or "
                                          "members")
    output = output_request(body.output, body.thresholds, body.members, model, settings)
    if body.frames is not None:
        inputs = inline_inputs(body, model)
    else:
        inputs = await run_in_threadpool(archive_inputs, get_archive(request, body.product), body, model)
    result = await compute_forecast(request, model, inputs, body.lead_steps, settings, output)
    fields, draw = (result, rain_png) if output.deterministic else (result[:, 0], probability_png)

    def encode() -> list[str]:
        return ["data:image/png;base64," + base64.b64encode(draw(frame)).decode("ascii") for frame in fields]

    step = inputs.step_minutes
    init = inputs.init.astype("datetime64[s]")
    times = [init + np.timedelta64(int(round(step * 60 * (k + 1))), "s") for k in range(len(result))]
    grid = {"ny": int(result.shape[-2]), "nx": int(result.shape[-1])}
    if inputs.grid is not None:
        grid["crs"] = inputs.grid.crs_proj
    probability = {} if output.deterministic else {"output": "probability", "thresholds": list(output.thresholds),
                                                   "members": output.members}
    return ForecastFramesResponse(model=model.name, identity=model.identity, init_time=utc_text(init),
                                  step_minutes=step,
                                  lead_minutes=[step * (k + 1) for k in range(len(result))],
                                  times=[utc_text(t) for t in times], frames=await run_in_threadpool(encode),
                                  grid=grid, **probability)
