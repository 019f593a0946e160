"""The app factory: ``create_app(settings)``; models load once at start-up (lifespan)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nowcast import __version__
from service.auth import key_problem, offered_key
from service.errors import error_body, install_error_handlers
from service.live_verification import LiveVerification, watch_verification
from service.metrics import Metrics
from service.reload import reload_production, watch_production
from service.routers import forecast, health, models, products, skill, viewer
from service.routers.forecast import RETRY_AFTER_S
from service.serving import load_models
from service.settings import ServiceSettings, load_settings


class RequestGate:
    """Cheap refusals before any body is parsed: 401 without a valid API key on /v1 routes, 503
    (Retry-After) when ``max_inflight`` forecast requests are already being handled, 413 for a
    body over ``max_bytes`` whether declared or streamed (chunked). A body under the limit is
    read here, then handed on, so a refusal is always a clean 413, never a parse error.

    Why the in-flight bound: parsing a forecast body costs more than shedding it, so a queue
    bound checked after parsing still lets a crowd of clients stall the loop and fill memory."""

    def __init__(self, app: ASGIApp, max_bytes: int, api_keys: list[str], max_inflight: int = 32):
        self.app, self.max_bytes, self.api_keys = app, max_bytes, api_keys
        self.max_inflight, self.inflight = max(1, max_inflight), 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_keys and scope["path"].startswith("/v1/"):
            problem = key_problem(offered_key(headers), self.api_keys)
            if problem:
                await self._discard_body(receive)
                return await _refuse(send, 401, "unauthorized", problem)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        forecast = scope["path"].startswith("/v1/forecast")
        if forecast and self.inflight >= self.max_inflight:
            await self._discard_body(receive)
            return await _refuse(send, 503, "overloaded", f"{self.inflight} forecast requests in progress; "
                                 "retry in a few seconds", retry_after=RETRY_AFTER_S)
        self.inflight += forecast
        try:
            await self._read_and_forward(scope, receive, send)
        finally:
            self.inflight -= forecast

    async def _discard_body(self, receive: Receive) -> None:
        """Read and drop the body (never kept, never parsed), up to ``max_bytes``, so the client
        gets the refusal as a response rather than a reset connection mid-upload."""
        seen = 0
        while seen <= self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _read_and_forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self._too_large(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _refuse(send, 413, "body_too_large", f"request body over the limit of {self.max_bytes} bytes")


async def _refuse(send: Send, status: int, code: str, message: str, retry_after: int | None = None) -> None:
    import json

    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(error_body(code, message)).encode()})


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
        verifier = asyncio.create_task(watch_verification(app)) if settings.verify_forecasts else None
        yield
        for task in (watcher, verifier):
            if task is not None:
                task.cancel()
        await app.state.verification.drain()  # forecasts answered are kept, even on the way out
        for served in app.state.models.values():
            await served.batcher.stop()

    app = FastAPI(
        title="nowcast", version=__version__, lifespan=lifespan,
        description="Precipitation nowcasts: forecast frame sequences in mm/h from the archive or uploaded frames.",
    )
    app.state.settings, app.state.metrics, app.state.archives, app.state.models = settings, metrics, {}, {}
    app.state.verification = LiveVerification(settings, metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(forecast.router)
    app.include_router(products.router)
    app.include_router(skill.router)
    app.include_router(viewer.router)

    @app.middleware("http")
    async def count_requests(request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    app.add_middleware(RequestGate, max_bytes=settings.max_body_bytes, api_keys=settings.api_keys,
                       max_inflight=settings.max_inflight)
    return app
