"""Liveness, readiness and Prometheus metrics (always open)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from pipelines.integrity import DamagedData
from pipelines.store import ProductArchive, list_products
from service.dependencies import get_metrics, get_settings
from service.metrics import Metrics
from service.settings import ServiceSettings

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "models not loaded or store unreachable"}})
async def readyz(request: Request, settings: ServiceSettings = Depends(get_settings)) -> JSONResponse:
    """Models are loaded and the store answers."""
    models = getattr(request.app.state, "models", {})
    damaged: dict[str, str] = {}
    try:
        products = await run_in_threadpool(list_products, settings.store)
        store_ok, store_error = True, None
        damaged = await run_in_threadpool(_damaged_products, settings.store, products)
    except Exception as exc:  # any failure to reach the store means not ready
        products, store_ok, store_error = [], False, f"{type(exc).__name__}: {exc}"
    ready = bool(models) and store_ok
    body = {"status": "ready" if ready else "not ready", "models": sorted(models), "store": settings.store,
            "store_reachable": store_ok, "products": [p for p in products if p not in damaged]}
    if damaged:  # named, without failing the healthy products: they are served as before
        body["damaged_products"] = damaged
    if store_error:
        body["store_error"] = store_error
    return JSONResponse(body, status_code=200 if ready else 503)


def _damaged_products(store: str, products: list[str]) -> dict[str, str]:
    """Products whose metadata cannot be opened, with why (their chunks: ``nowcast store check``)."""
    damaged = {}
    for name in products:
        try:
            ProductArchive(store, name).exists()
        except DamagedData as exc:
            damaged[name] = str(exc)
    return damaged


@router.get("/metrics", response_class=Response)
async def metrics(collected: Metrics = Depends(get_metrics)) -> Response:
    """Prometheus text format: requests, latency, batch sizes, inference time."""
    return Response(collected.render(), media_type="text/plain; version=0.0.4")
