"""Live verification in the service: each whole-grid forecast made from the archive is kept, and
scored once the observations of its leads are ingested (``nowcast.live_verification``).

The forecast routes hand every such forecast to ``LiveVerification.keep_soon``, which writes it to
the ledger off the request path (a probability forecast with its ``thresholds``: Brier score and ROC
area per threshold once observed); ``watch_verification`` runs a pass over every product's ledger
each ``verification_interval_s`` (and once at start-up, so a restart picks up where the last
process stopped) and refreshes the skill gauges. A failure is logged and counted
(``nowcast_verification_errors_total``), never passed to a client: verification must not take
forecasts down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from nowcast.live_verification import PassResult, VerificationLedger, open_ledgers
from service.metrics import Metrics
from service.settings import ServiceSettings

log = logging.getLogger("nowcast.service")
#: pauses (s) before each new try to keep a forecast in a store that did not answer
KEEP_RETRY_S = (1.0, 4.0, 15.0)
#: forecasts waiting to be kept, at most; beyond it one is dropped (counted): each holds a whole
#: forecast in memory, and a slow store must not grow the service without bound
MAX_QUEUED_KEEPS = 8


class LiveVerification:
    """The service's ledgers (one per product) and its verification passes."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self._ledgers: dict[str, VerificationLedger] = {}
        self._pass_lock = threading.Lock()  # one pass at a time per process
        # a kept forecast is never rewritten (a longer one for the same init) while a pass reads it
        self._ledger_lock = threading.Lock()
        self._writes: set[asyncio.Future] = set()
        # keeps run on their own thread, never on the request threadpool: a store that stalls them
        # (retries included) cannot take the threads that answer requests
        self._keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nowcast-keep")

    def ledger(self, product: str) -> VerificationLedger:
        if product not in self._ledgers:
            self._ledgers[product] = VerificationLedger(self.settings.store, product,
                                                        grace_minutes=self.settings.verification_grace_minutes)
        return self._ledgers[product]

    def keep(self, product: str, model: str, init: np.datetime64, forecast: np.ndarray, step_minutes: float,
             thresholds: tuple[float, ...] = (), members: int | None = None) -> None:
        """Write the forecast to the ledger, retrying a store that is briefly unreachable; give up
        (logged and counted) after KEEP_RETRY_S: the client has its answer either way. With
        ``thresholds``, ``forecast`` is [lead, threshold, y, x] exceedance probabilities (counted over
        ``members``, None: the model's own)."""
        for attempt, pause in enumerate((*KEEP_RETRY_S, None)):
            try:
                with self._ledger_lock:
                    ledger = self.ledger(product)
                    if thresholds:
                        ledger.register_probabilities(model, init, forecast, thresholds, step_minutes, members)
                    else:
                        ledger.register(model, init, forecast, step_minutes)
                return
            except Exception:
                if pause is None:
                    self.metrics.verification_errors.labels("keep").inc()
                    log.exception("could not keep the %s forecast of %s from %s for verification (%d tries)",
                                  model, product, init, attempt + 1)
                    return
                time.sleep(pause)

    def keep_soon(self, product: str, model: str, init: np.datetime64, forecast: np.ndarray,
                  step_minutes: float, thresholds: tuple[float, ...] = (), members: int | None = None) -> None:
        """``keep`` on the keeper thread, after the answer; ``drain`` waits for those under way.
        With MAX_QUEUED_KEEPS already waiting, this one is dropped, logged and counted."""
        if len(self._writes) >= MAX_QUEUED_KEEPS:
            self.metrics.verification_errors.labels("keep_dropped").inc()
            log.warning("%d forecasts already wait to be kept; the %s forecast of %s from %s is not verified",
                        len(self._writes), model, product, init)
            return
        future = asyncio.get_running_loop().run_in_executor(self._keeper, self.keep, product, model, init,
                                                            forecast, step_minutes, thresholds, members)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def run_pass(self) -> dict[str, PassResult]:
        """Verify what can be verified in every product's ledger, then refresh the gauges."""
        with self._pass_lock:
            ledgers = open_ledgers(self.settings.store, grace_minutes=self.settings.verification_grace_minutes)
            results, rolling = {}, {}
            for ledger in ledgers:
                results[ledger.product] = ledger.verify(
                    on_case=lambda model, outcome, p=ledger.product: self.metrics.verified.labels(
                        p, model, outcome).inc(), lock=self._ledger_lock)
                rolling[ledger.product] = ledger.rolling(self.settings.skill_hours)
            self.metrics.set_skill(rolling)
            return results


async def watch_verification(app: FastAPI) -> None:
    """A pass at start-up, then one every ``verification_interval_s``."""
    live: LiveVerification = app.state.verification
    while True:
        try:
            await run_in_threadpool(live.run_pass)
        except Exception:  # an unreadable ledger or archive must not stop the next pass
            live.metrics.verification_errors.labels("verify").inc()
            log.exception("live verification pass failed")
        await asyncio.sleep(app.state.settings.verification_interval_s)
