"""Serve the model store's production model, and swap it in when the pointer moves or on SIGHUP.

The new model is loaded off the event loop, started, and put in place with one assignment;
requests that already picked the old one are answered by it before it stops, so a reload
drops nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from nowcast.model_store import ModelStore
from service.serving import serve_model

PRODUCTION = "production"
log = logging.getLogger("nowcast.service")


async def reload_production(app: FastAPI, force: bool = False) -> bool:
    """Load the production version if it changed (or ``force``); True when a new model is live."""
    settings = app.state.settings
    model_store = ModelStore(settings.registry)
    version = await run_in_threadpool(model_store.production)
    current = app.state.models.get(PRODUCTION)
    if version is None or (not force and current is not None and current.version == version):
        return False
    checkpoint = str(model_store.checkpoint(version))
    served = await run_in_threadpool(serve_model, PRODUCTION, checkpoint, settings, app.state.metrics, version)
    served.batcher.start()
    app.state.models = {**app.state.models, PRODUCTION: served}
    app.state.metrics.reloads.inc()
    log.info("production model is now %s", version)
    if current is not None:
        asyncio.create_task(current.batcher.drain_and_stop())
    return True


async def watch_production(app: FastAPI) -> None:
    """Poll the pointer every ``reload_interval_s``; SIGHUP forces a reload at once."""
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        pass
    while True:
        try:
            await asyncio.wait_for(hangup.wait(), app.state.settings.reload_interval_s)
        except TimeoutError:
            pass
        forced = hangup.is_set()
        hangup.clear()
        try:
            await reload_production(app, force=forced)
        except Exception:  # a bad new version must not take the service down: keep the old one
            log.exception("reloading the production model failed; still serving the previous one")
