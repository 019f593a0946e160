"""Micro-batching: concurrent requests to one model share a forward pass.

A request waits at most ``wait_ms`` for others; requests with the same frame shape and lead
steps are stacked into one batch (up to ``max_batch``) and run in a worker thread, so the
event loop keeps serving while the model computes.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from nowcast.forecaster import LoadedForecaster
from service.metrics import Metrics


@dataclass
class _Job:
    frames: np.ndarray  # [T, H, W] mm/h
    lead_steps: int
    future: asyncio.Future
    step_minutes: float | None = None  # the frames' step; the forecaster resamples to its own
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for the answer
    auxiliary: dict[str, np.ndarray] | None = None  # a multi-source model's other products, like frames
    #: () for one field; ("ensemble", members) or ("probability", thresholds, members) (service.outputs)
    output: tuple = ()

    @property
    def abandoned(self) -> bool:
        return self.future.done() or time.monotonic() >= self.deadline

    @property
    def key(self) -> tuple:
        return (*self.frames.shape, self.lead_steps, self.step_minutes, self.output)


class Overloaded(RuntimeError):
    """The model's queue is full: shed the request (503 + Retry-After) instead of queueing it."""


class Retired(RuntimeError):
    """This batcher has stopped (its model was replaced): the caller resubmits to the model now served
    under the same name. A request may pick a model, read its frames, and only then submit, by
    which time a reload may have drained and stopped the old model."""


class MicroBatcher:
    def __init__(self, name: str, forecaster: LoadedForecaster, metrics: Metrics, max_batch: int, wait_ms: float,
                 max_queue: int = 64):
        self.name, self.forecaster, self.metrics = name, forecaster, metrics
        self.max_queue = max(1, max_queue)
        self.max_batch, self.wait_s = max(1, max_batch), max(0.0, wait_ms) / 1000.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._busy = False
        self._accepting = False
        self._last_submit = 0.0
        # one thread per model: forward passes of a model run one after another, off the loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")
        self._accepting = True

    async def stop(self) -> None:
        """Stop computing; requests still queued are handed ``Retired`` (never left to time out)."""
        self._accepting = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Retired(f"model {self.name!r} was replaced"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def drain_and_stop(self, quiet_s: float = 1.0, limit_s: float = 120.0) -> None:
        """Stop once no request has arrived for ``quiet_s`` and everything queued is answered
        (a model being replaced keeps serving the requests that already picked it)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            idle = self._queue is None or (self._queue.empty() and not self._busy)
            if idle and time.monotonic() - self._last_submit >= quiet_s:
                break
            await asyncio.sleep(0.05)
        await self.stop()

    @property
    def queued(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, frames: np.ndarray, lead_steps: int, step_minutes: float | None = None,
                     timeout_s: float | None = None, auxiliary: dict[str, np.ndarray] | None = None,
                     output: tuple = ()) -> np.ndarray:
        """The forecast; ``Overloaded`` when ``max_queue`` requests already wait, ``Retired`` once stopped.
        A request whose ``timeout_s`` has passed is dropped from the queue, never computed for nobody. ``output``: see
        ``_Job.output``; such requests run one per forward pass (each holds many fields)."""
        if self._queue is None or not self._accepting:
            raise Retired(f"model {self.name!r} is not serving (replaced or stopped)")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"model {self.name!r} has {self.max_queue} requests queued")
        future = asyncio.get_running_loop().create_future()
        self._last_submit = time.monotonic()
        deadline = float("inf") if timeout_s is None else time.monotonic() + timeout_s
        self._queue.put_nowait(_Job(frames, lead_steps, future, step_minutes, deadline, auxiliary, output))
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            if not future.done():
                future.cancel()

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple[int, ...], list[_Job]] = defaultdict(list)
            for index, job in enumerate(jobs):  # probabilistic jobs alone: memory bounded by one request's
                groups[job.key if not job.output else (index,)].append(job)
            self._busy = True
            try:
                for group in groups.values():
                    await self._forward(loop, group)
            except asyncio.CancelledError:  # stopped mid-batch: the unanswered are resubmitted elsewhere
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(Retired(f"model {self.name!r} was stopped"))
                raise
            finally:
                self._busy = False

    async def _forward(self, loop: asyncio.AbstractEventLoop, group: list[_Job]) -> None:
        # checked just before computing: earlier groups may have taken long enough for these
        # clients to have been answered 504 already
        dropped = [job for job in group if job.abandoned]
        if dropped:
            self.metrics.dropped.labels(self.name).inc(len(dropped))
        group = [job for job in group if not job.abandoned]
        if not group:
            return
        stacked = np.stack([job.frames for job in group])
        auxiliary = None
        if group[0].auxiliary:  # every job of a model carries the same products (checked by the router)
            auxiliary = {p: np.stack([job.auxiliary[p] for job in group]) for p in group[0].auxiliary}
        started = time.perf_counter()
        output = group[0].output
        if not output:
            run = partial(self.forecaster.predict, auxiliary=auxiliary)
        elif output[0] == "ensemble":
            run = partial(self.forecaster.predict_ensemble, members=output[1])
        else:
            run = partial(self.forecaster.predict_probabilities, thresholds=list(output[1]), members=output[2])
        try:
            result = await loop.run_in_executor(
                self._executor, partial(run, step_minutes=group[0].step_minutes), stacked, group[0].lead_steps)
        except Exception as exc:  # hand the failure to every waiting request
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.metrics.observe_forward(self.name, len(group), time.perf_counter() - started)
        for job, forecast in zip(group, result, strict=True):
            if not job.future.done():
                job.future.set_result(forecast)
