"""GET /v1/models: what is served, with its constraints, training data and skill."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import require_api_key
from service.dependencies import get_models, get_settings
from service.schemas import ErrorResponse, ModelsResponse
from service.serving import ServedModel
from service.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)],
                   responses={401: {"model": ErrorResponse}})


@router.get("/models", response_model=ModelsResponse)
def list_models(
    settings: ServiceSettings = Depends(get_settings),
    models: dict[str, ServedModel] = Depends(get_models),
) -> ModelsResponse:
    return ModelsResponse(models=[m.describe(settings) for m in models.values()])
