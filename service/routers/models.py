"""GET /v1/models: what is served, with its constraints, training data and skill."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from pipelines.info import time_step_minutes
from service.auth import require_api_key
from service.dependencies import get_models, get_settings
from service.registry import ServedModel
from service.schemas import ErrorResponse, ModelsResponse
from service.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)],
                   responses={401: {"model": ErrorResponse}})


def default_step(request: Request, settings: ServiceSettings) -> float | None:
    """The archive's step, reported for baselines (they run at whatever step they are given)."""
    if not hasattr(request.app.state, "default_step"):
        from pipelines.store import ProductArchive, list_products

        step = None
        try:
            products = list_products(settings.store)
            if products:
                step = time_step_minutes(ProductArchive(settings.store, products[0]).times())
        except Exception:
            step = None
        request.app.state.default_step = step
    return request.app.state.default_step


@router.get("/models", response_model=ModelsResponse)
def list_models(
    request: Request, settings: ServiceSettings = Depends(get_settings),
    models: dict[str, ServedModel] = Depends(get_models),
) -> ModelsResponse:
    step = default_step(request, settings)
    return ModelsResponse(models=[m.describe(settings, step) for m in models.values()])
