"""GET /v1/skill: rolling scores of the forecasts the service (and backfill) made from a product."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from service.auth import require_api_key
from service.dependencies import get_archive
from service.errors import ApiError
from service.schemas import PRODUCT_PATTERN, YEARS, ErrorResponse, SkillResponse

router = APIRouter(prefix="/v1", tags=["verification"], dependencies=[Depends(require_api_key)])

#: the longest window asked for: a year of 5-minute forecasts is still one read per record
MAX_HOURS = 24 * 366


@router.get("/skill", response_model=SkillResponse,
            responses={404: {"model": ErrorResponse, "description": "unknown product"},
                       422: {"model": ErrorResponse, "description": "invalid product, hours or end"}})
async def skill(
    request: Request,
    product: Annotated[str, Query(pattern=PRODUCT_PATTERN, description="Product in the service's archive")],
    hours: Annotated[float, Query(gt=0, le=MAX_HOURS, description="Window length before end")] = 24.0,
    end: Annotated[datetime | None, Query(description="Window end, UTC (default: the product's newest frame)")
                   ] = None,
) -> SkillResponse:
    """Scores per model and lead, pooled over the forecasts verified with init times in the window.

    A forecast counts once its leads are all observed; dry init frames are left out as
    ``nowcast evaluate`` leaves them out, so the two give the same scores on the same cases."""
    if end is not None and not YEARS[0] <= end.year <= YEARS[1]:
        raise ApiError(422, "bad_times", f"end year {end.year} is outside {YEARS[0]}-{YEARS[1]}")
    get_archive(request, product)  # 404 for a product the archive does not hold
    ledger = request.app.state.verification.ledger(product)
    return SkillResponse(**await run_in_threadpool(ledger.rolling, hours, end))
