"""POST /v1/forecast (JSON) and POST /v1/forecast/upload (NetCDF or .npy via multipart).

The routes pick where the frames come from (``service.inputs``), then ``run_forecast`` queues
them on the model's micro-batcher and renders the answer in the negotiated format."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from service.auth import require_api_key
from service.batching import Overloaded, Retired
from service.dependencies import get_archive, get_models, get_settings
from service.errors import ApiError
from service.formats import Forecast, NumpyJSONResponse, negotiate, to_gif, to_json, to_netcdf, to_png
from service.inputs import (
    Inputs,
    archive_inputs,
    check_auxiliary,
    check_frames,
    check_lead,
    check_model_grid,
    inline_inputs,
    pick_model,
    upload_inputs,
)
from service.outputs import OutputRequest, check_output_size, output_request, with_verified_thresholds
from service.schemas import (
    YEARS,
    EnsembleForecastResponse,
    ErrorResponse,
    ForecastRequest,
    ForecastResponse,
    ProbabilityForecastResponse,
)
from service.serving import ServedModel
from service.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["forecast"], dependencies=[Depends(require_api_key)])

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "unknown model or product"},
    406: {"model": ErrorResponse, "description": "Accept asks for a format the service cannot give"},
    413: {"model": ErrorResponse, "description": "body over the size limit"},
    503: {"model": ErrorResponse, "description": "the model's queue is full; retry after Retry-After seconds"},
    422: {"model": ErrorResponse, "description": "invalid frames, lead, grid, times or parameters"},
    504: {"model": ErrorResponse, "description": "inference took longer than the timeout"},
}
#: the JSON answer, by the request's "output": frames, probabilities or members (service.outputs)
AnyForecastResponse = ForecastResponse | ProbabilityForecastResponse | EnsembleForecastResponse
RESPONSES = {
    200: {"model": AnyForecastResponse, "content": {"application/x-netcdf": {}, "image/gif": {}, "image/png": {}},
          "description": "forecast frames in mm/h with their valid times (or, by 'output', exceedance "
                         "probabilities or ensemble members; those as JSON or NetCDF only)"},
    **ERRORS,
}


#: seconds a shed client is asked to wait (the Retry-After header)
RETRY_AFTER_S = 2


def media_type(accept: str | None) -> str:
    """The response format, decided before any frame is read."""
    media = negotiate(accept)
    if media is None:
        raise ApiError(406, "not_acceptable", "Accept must allow application/json, application/x-netcdf, "
                                              "image/gif or image/png")
    return media


def check_media(output: OutputRequest, media: str) -> None:
    """Probabilities and members come as numbers (JSON, NetCDF); the pictures are of one rain-rate field."""
    if not output.deterministic and media not in ("application/json", "application/x-netcdf"):
        raise ApiError(406, "not_acceptable", f"{output.kind} output comes as application/json or "
                                              "application/x-netcdf")


async def compute_forecast(request: Request, model: ServedModel, inputs: Inputs, lead_steps: int,
                           settings: ServiceSettings, output: OutputRequest = OutputRequest()) -> np.ndarray:
    """The checked inputs through the model's micro-batcher: [lead_steps, H, W] mm/h (NaN = nodata), or
    the probabilities / members ``output`` asks for. A whole-grid forecast from the archive is kept for
    live verification: a deterministic one as answered, a probability one at the thresholds verification
    scores (computed in the same run beside those asked for: ``with_verified_thresholds``)."""
    frames = check_frames(inputs.frames, model, settings, inputs.step_minutes)
    check_model_grid(model, frames.shape[1], frames.shape[2], lead_steps, settings)
    auxiliary = check_auxiliary(inputs, model, kept=frames.shape[0])
    pixels = frames.shape[1] * frames.shape[2]
    check_output_size(output, lead_steps, pixels, settings)
    if not output.deterministic and model.forecaster.resamples(inputs.step_minutes):
        raise ApiError(422, "bad_step", f"{output.kind} output of {model.name!r} needs frames at its own step "
                                        f"({model.forecaster.step_minutes:g} min)")
    keep = inputs.product is not None and settings.verify_forecasts
    job, verified = output, ()
    if keep and output.kind == "probability":
        job, verified = with_verified_thresholds(output, model, lead_steps, pixels, settings)
    try:
        result = await model.batcher.submit(frames, lead_steps, inputs.step_minutes,
                                            timeout_s=settings.inference_timeout_s, auxiliary=auxiliary,
                                            output=job.job)
    except TimeoutError as exc:
        raise ApiError(504, "inference_timeout", (
            f"no forecast from {model.name!r} within {settings.inference_timeout_s:g} s (the service setting "
            f"inference_timeout_s, NOWCAST_INFERENCE_TIMEOUT_S): raise it, or ask for fewer leads or a smaller "
            f"bbox; a network is fastest at its trained leads ({model.forecaster.default_lead_steps})")) from exc
    except Retired as exc:  # the model was replaced between picking it and submitting: ask its successor
        current = request.app.state.models.get(model.name)
        if current is None or current is model:
            raise ApiError(503, "model_unavailable", f"{exc}; retry in a few seconds",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
        return await compute_forecast(request, current, inputs, lead_steps, settings, output)
    except Overloaded as exc:
        request.app.state.metrics.shed.labels(model.name).inc()
        raise ApiError(503, "overloaded", f"{exc}; retry in a few seconds",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    if keep and output.deterministic:  # scored once observed
        request.app.state.verification.keep_soon(inputs.product, model.identity, inputs.init, result,
                                                 inputs.step_minutes)
    elif keep and verified:  # [lead, threshold, y, x]: the verified thresholds kept, the asked-for answered
        kept = result[:, [job.thresholds.index(t) for t in verified]]
        request.app.state.verification.keep_soon(inputs.product, model.identity, inputs.init, kept,
                                                 inputs.step_minutes, verified, job.members)
        result = result[:, : len(output.thresholds)]
    return result


async def run_forecast(request: Request, model: ServedModel, inputs: Inputs, lead_steps: int, media: str,
                       settings: ServiceSettings, output: OutputRequest = OutputRequest()) -> Response:
    result = await compute_forecast(request, model, inputs, lead_steps, settings, output)
    forecast = Forecast(model.name, result, inputs.init, inputs.step_minutes, inputs.grid, output.kind,
                        output.thresholds, output.members if output.kind == "probability" else None,
                        identity=model.identity)
    if media == "application/json":
        return NumpyJSONResponse(to_json(forecast))
    render = {"application/x-netcdf": to_netcdf, "image/gif": to_gif, "image/png": to_png}[media]
    return Response(await run_in_threadpool(render, forecast), media_type=media)


@router.post("/forecast", response_model=AnyForecastResponse, responses=RESPONSES)
async def forecast(
    request: Request, body: ForecastRequest,
    accept: Annotated[str | None, Header()] = None,
    settings: ServiceSettings = Depends(get_settings), models: dict[str, ServedModel] = Depends(get_models),
) -> Response:
    """Forecast from inline frames or from the latest (or given) frames of a product."""
    model = pick_model(models, body.model)
    media = media_type(accept)
    check_lead(body.lead_steps, settings)
    output = output_request(body.output, body.thresholds, body.members, model, settings)
    check_media(output, media)
    if body.frames is not None:
        inputs = inline_inputs(body, model)
    else:
        inputs = await run_in_threadpool(archive_inputs, get_archive(request, body.product), body, model)
    return await run_forecast(request, model, inputs, body.lead_steps, media, settings, output)


@router.post("/forecast/upload", response_model=AnyForecastResponse, responses=RESPONSES)
async def forecast_upload(
    request: Request,
    file: Annotated[UploadFile, File(description=".npy (T x H x W, mm/h) or NetCDF with precip(time, y, x)")],
    model: Annotated[str, Form()],
    lead_steps: Annotated[int, Form(ge=1)],
    end_time: Annotated[datetime, Form()],
    step_minutes: Annotated[float | None, Form(gt=0, le=1440)] = None,
    output: Annotated[Literal["deterministic", "probability", "ensemble"], Form()] = "deterministic",
    thresholds: Annotated[list[float] | None, Form(description="probability output: mm/h, one field each")] = None,
    members: Annotated[int | None, Form(ge=1)] = None,
    accept: Annotated[str | None, Header()] = None,
    settings: ServiceSettings = Depends(get_settings), models: dict[str, ServedModel] = Depends(get_models),
) -> Response:
    """Forecast from frames uploaded as a file, for grids too large for JSON."""
    served = pick_model(models, model)
    media = media_type(accept)
    check_lead(lead_steps, settings)
    wanted = output_request(output, thresholds, members, served, settings)
    check_media(wanted, media)
    if not YEARS[0] <= end_time.year <= YEARS[1]:
        raise ApiError(422, "bad_times", f"end_time year {end_time.year} is outside {YEARS[0]}-{YEARS[1]}")
    name = (file.filename or "upload")[:100]
    inputs = await run_in_threadpool(upload_inputs, await file.read(), name, served, settings, step_minutes, end_time)
    return await run_forecast(request, served, inputs, lead_steps, media, settings, wanted)
