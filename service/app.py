"""The app factory: ``create_app(settings)``; models load once at start-up (lifespan)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nowcast import __version__
from service.errors import error_body, install_error_handlers
from service.metrics import Metrics
from service.registry import load_models
from service.reload import reload_production, watch_production
from service.routers import forecast, health, models
from service.settings import ServiceSettings, load_settings


class BodyLimit:
    """413 before the handler reads a body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        import json

        body = json.dumps(error_body("body_too_large", f"request body over the limit of {self.max_bytes} bytes"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.models = load_models(settings, metrics)
        for served in app.state.models.values():
            served.batcher.start()
        watcher = None
        if settings.registry:
            await reload_production(app)
            watcher = asyncio.create_task(watch_production(app))
        yield
        if watcher is not None:
            watcher.cancel()
        for served in app.state.models.values():
            await served.batcher.stop()

    app = FastAPI(
        title="nowcast", version=__version__, lifespan=lifespan,
        description="Precipitation nowcasts: forecast frame sequences in mm/h from the archive or uploaded frames.",
    )
    app.state.settings, app.state.metrics, app.state.archives, app.state.models = settings, metrics, {}, {}
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(forecast.router)

    @app.middleware("http")
    async def count_requests(request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
