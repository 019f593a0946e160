"""Prometheus metrics of one app instance (its own registry, so tests and apps don't mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nowcast_http_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("nowcast_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.forward_passes = Counter("nowcast_forward_passes_total", "Model forward passes", ["model"],
                                      registry=self.registry)
        self.batch_size = Histogram("nowcast_batch_size", "Requests per forward pass", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.inference = Histogram("nowcast_inference_seconds", "Forward pass time", ["model"],
                                   registry=self.registry,
                                   buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

        self.dropped = Counter("nowcast_dropped_requests_total",
                               "Queued forecasts dropped because their client had stopped waiting", ["model"],
                               registry=self.registry)
        self.shed = Counter("nowcast_shed_requests_total", "Requests refused (503) with the model's queue full",
                            ["model"], registry=self.registry)
        self.reloads = Counter("nowcast_model_reloads_total", "Production model reloads", registry=self.registry)

    def observe_forward(self, model: str, batch: int, seconds: float) -> None:
        self.forward_passes.labels(model).inc()
        self.batch_size.labels(model).observe(batch)
        self.inference.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
