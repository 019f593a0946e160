"""Prometheus metrics of one app instance (its own registry, so tests and apps don't mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

        # live verification: rolling scores over settings.skill_hours, refreshed after every pass
        skill = ["product", "model", "lead"]
        self.skill_csi = Gauge("nowcast_skill_csi", "Critical success index, rolling window",
                               [*skill, "threshold"], registry=self.registry)
        self.skill_pod = Gauge("nowcast_skill_pod", "Probability of detection, rolling window",
                               [*skill, "threshold"], registry=self.registry)
        self.skill_far = Gauge("nowcast_skill_far", "False alarm ratio, rolling window",
                               [*skill, "threshold"], registry=self.registry)
        self.skill_fss = Gauge("nowcast_skill_fss", "Fractions skill score (1 mm/h, 10 km), rolling window",
                               skill, registry=self.registry)
        self.skill_mae = Gauge("nowcast_skill_mae_mm_h", "Mean absolute error (mm/h), rolling window", skill,
                               registry=self.registry)
        self.skill_brier = Gauge("nowcast_skill_brier", "Brier score of probability forecasts, rolling window",
                                 [*skill, "threshold"], registry=self.registry)
        self.skill_cases = Gauge("nowcast_skill_cases", "Verified forecasts pooled in the rolling window", skill,
                                 registry=self.registry)
        self.verification_pending = Gauge("nowcast_verification_pending",
                                          "Forecasts waiting for the observations of their leads",
                                          ["product", "model"], registry=self.registry)
        self.verified = Counter("nowcast_verified_forecasts_total", "Forecasts verified, by outcome",
                                ["product", "model", "outcome"], registry=self.registry)
        self.verification_errors = Counter("nowcast_verification_errors_total",
                                           "Failures to keep or verify a forecast (the forecast itself was "
                                           "answered)", ["stage"], registry=self.registry)

    def observe_forward(self, model: str, batch: int, seconds: float) -> None:
        self.forward_passes.labels(model).inc()
        self.batch_size.labels(model).observe(batch)
        self.inference.labels(model).observe(seconds)

    def set_skill(self, rolling: dict[str, dict]) -> None:
        """Replace the skill gauges with ``VerificationLedger.rolling`` answers, one per product:
        a model or lead gone from the window leaves no stale series behind."""
        for gauge in (self.skill_csi, self.skill_pod, self.skill_far, self.skill_brier, self.skill_fss,
                      self.skill_mae, self.skill_cases, self.verification_pending):
            gauge.clear()
        for product, answer in rolling.items():
            for entry in answer["models"]:
                for row in entry["scores"]:
                    labels = (product, entry["model"], f"{row['lead_minutes']:g}")
                    self.skill_cases.labels(*labels).set(row["n_cases"])
                    for gauge, key in ((self.skill_csi, "csi"), (self.skill_pod, "pod"), (self.skill_far, "far"),
                                       (self.skill_brier, "brier")):
                        for threshold, value in (row.get(key) or {}).items():
                            if value is not None:
                                gauge.labels(*labels, threshold).set(value)
                    for gauge, key in ((self.skill_fss, "fss_1mm_10km"), (self.skill_mae, "mae_mm_h")):
                        if row[key] is not None:
                            gauge.labels(*labels).set(row[key])
            for model, count in answer.get("pending", {}).items():
                self.verification_pending.labels(product, model).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
