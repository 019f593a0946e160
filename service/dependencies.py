"""FastAPI dependencies: the app's settings, models, metrics and archives."""

from __future__ import annotations

import re

from fastapi import Request

from pipelines.store import ProductArchive
from service.errors import ApiError
from service.metrics import Metrics
from service.schemas import PRODUCT_PATTERN
from service.serving import ServedModel
from service.settings import ServiceSettings


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_models(request: Request) -> dict[str, ServedModel]:
    return request.app.state.models


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_archive(request: Request, product: str) -> ProductArchive:
    """An archive handle per product, opened once; unknown products are a 404."""
    cache: dict[str, ProductArchive] = request.app.state.archives
    if not re.fullmatch(PRODUCT_PATTERN, product):
        raise ApiError(404, "unknown_product", f"no product {product[:80]!r} in the archive (names are letters, "
                                               "digits, '_', '.', '-', at most 64)")
    if product not in cache:
        try:
            archive = ProductArchive(request.app.state.settings.store, product)
        except ValueError as exc:
            raise ApiError(404, "unknown_product", str(exc)) from exc
        if not archive.exists():
            raise ApiError(404, "unknown_product", f"no product {product!r} in the archive")
        cache[product] = archive
    return cache[product]
