"""Serving: the models a service instance serves: loaded once at start-up, each with its batcher."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nowcast.forecaster import WEIGHTS_DIR, LoadedForecaster, load_forecaster
from service.batching import MicroBatcher
from service.metrics import Metrics
from service.schemas import ModelInfo
from service.settings import ServiceSettings

#: what one forecast at the service's grid limit costs each shipped model and baseline on a CPU, as
#: ``bench/cpu_forecast_limit.py --write`` measured it (docs/performance.md)
CPU_COST = WEIGHTS_DIR / "cpu_cost.json"
#: the share of ``inference_timeout_s`` a forecast at a model's CPU limit may take by that measured cost:
#: the rest is headroom for a busier machine and for the other models' forecasts running beside it
CPU_BUDGET_SHARE = 0.5


@functools.cache
def _cpu_cost_table() -> dict[str, Any]:
    import json

    return json.loads(CPU_COST.read_text())["models"] if CPU_COST.is_file() else {}


def measured_cpu_cost(forecaster: LoadedForecaster) -> dict[str, Any] | None:
    """The bench's measurement for these very weights (a shipped network by name and fingerprint, a
    baseline by name); None for anything it did not measure (a user's checkpoint)."""
    entry = _cpu_cost_table().get(forecaster.name)
    if entry is None or entry.get("fingerprint") != forecaster.fingerprint:
        return None
    return entry


def cpu_pixel_limit(forecaster: LoadedForecaster, timeout_s: float, lead_steps: int | None = None) -> int | None:
    """Most pixels a forecast of ``lead_steps`` (default: the model's own) may have on a CPU so that it
    takes at most CPU_BUDGET_SHARE of ``timeout_s`` by its measured cost: the process CPU seconds of one
    forecast (all threads: on two idle cores the wall time is at most that), linear in the pixels and in
    the steps the model runs (its input steps plus the leads). None: no measurement for this model."""
    cost = measured_cpu_cost(forecaster)
    if cost is None:
        return None
    leads = lead_steps or forecaster.default_lead_steps
    scale = (forecaster.input_steps + leads) / (forecaster.input_steps + cost["lead_steps"])
    seconds_per_pixel = cost["cpu_seconds"] / cost["pixels"] * scale
    return int(CPU_BUDGET_SHARE * timeout_s / seconds_per_pixel)


@dataclass
class ServedModel:
    name: str
    forecaster: LoadedForecaster
    batcher: MicroBatcher
    version: str | None = None  # the model store's version, for the production model

    @property
    def identity(self) -> str:
        """The served name plus the weights' fingerprint: what live verification records it as."""
        from nowcast.forecaster import model_identity

        return model_identity(self.name, self.forecaster.fingerprint)

    @property
    def on_cpu(self) -> bool:
        """Runs on the CPU (every baseline does: pysteps is numpy)."""
        return next(self.forecaster.model.parameters(), torch.empty(0)).device.type == "cpu"

    def pixel_limit(self, settings: ServiceSettings, lead_steps: int | None = None) -> tuple[int, str]:
        """The most pixels one forecast of ``lead_steps`` may have, and what sets it: the setting
        ``model_max_grid_pixels`` for this model; on a CPU, its measured cost within
        ``inference_timeout_s`` ("cpu_cost", ``cpu_pixel_limit``); else ``max_grid_pixels``. Never above
        ``max_grid_pixels``."""
        override = settings.model_max_grid_pixels.get(self.name)
        if override is not None:
            return min(override, settings.max_grid_pixels), "model_max_grid_pixels"
        if self.on_cpu:
            limit = cpu_pixel_limit(self.forecaster, settings.inference_timeout_s, lead_steps)
            if limit is not None and limit < settings.max_grid_pixels:
                return limit, "cpu_cost"
        return settings.max_grid_pixels, "max_grid_pixels"

    def describe(self, settings: ServiceSettings) -> ModelInfo:
        f = self.forecaster
        max_pixels, limited_by = self.pixel_limit(settings)
        return ModelInfo(**{
            "name": self.name,
            "identity": self.identity,
            "fingerprint": f.fingerprint,
            "architecture": f.name,
            "kind": "network" if f.trainable else "baseline",
            "input_steps": f.input_steps,
            "max_lead_steps": settings.max_lead_steps,
            "trained_output_steps": f.max_lead_steps if f.trainable else None,
            "step_minutes": f.step_minutes,  # None: a baseline works at whatever step its frames have
            "fixed_step": f.step_minutes is not None,
            "grid": {"multiple_of": 1, "max_pixels": max_pixels, "limited_by": limited_by},  # predict pads
            "parameters": sum(p.numel() for p in f.model.parameters()),
            "source": f.source,
            "version": self.version,
            "training_data": f.info.get("data") if f.trainable else None,
            "skill": model_skill(f) if f.trainable else None,
            "input_products": f.input_products,
            "probability_matching": f.probability_matching,
            "outputs": f.outputs,
        })


def model_skill(forecaster: LoadedForecaster) -> dict[str, Any] | None:
    """What is known of a network's skill: the model store's verification (``meta.json`` beside a
    version's checkpoint), or for shipped weights their validation score and the model card's
    test scores (``nowcast/weights/skill.json``); None for a bare checkpoint."""
    import json

    path = Path(forecaster.source)
    meta = path.parent / "meta.json"
    if meta.is_file():
        recorded = json.loads(meta.read_text())
        if recorded.get("scores") is None:
            return None
        return {"source": "model store verification", "scores": recorded["scores"],
                "promotion": recorded.get("promotion")}
    training = forecaster.info.get("training") or {}
    if path.parent.resolve() == WEIGHTS_DIR.resolve():
        table = WEIGHTS_DIR / "skill.json"
        tests = json.loads(table.read_text())["test_events"].get(path.stem) if table.is_file() else None
        return {"source": "nowcast/weights/MODEL_CARD.md", "val_csi_1mm_30min": training.get("val_csi_1mm_30min"),
                "test_events": tests}
    return None


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def serve_model(name: str, spec: str, settings: ServiceSettings, metrics: Metrics,
                version: str | None = None) -> ServedModel:
    version_name = None
    if settings.registry and spec != "production" and not Path(spec).is_file():
        from nowcast.model_store import ModelStore

        store = ModelStore(settings.registry)
        if spec in store.list():  # a model store version, served by its name
            version_name, spec = spec, str(store.checkpoint(spec))
    forecaster = load_forecaster(spec, precision=settings.precision)
    if version_name:
        forecaster.name, version = version_name, version or version_name
    forecaster.model.to(pick_device(settings.device))
    batch = settings.max_batch_size if settings.micro_batching else 1
    wait = settings.batch_wait_ms if settings.micro_batching else 0.0
    batcher = MicroBatcher(name, forecaster, metrics, batch, wait, settings.max_queue)
    return ServedModel(name, forecaster, batcher, version)


def load_models(settings: ServiceSettings, metrics: Metrics) -> dict[str, ServedModel]:
    served: dict[str, ServedModel] = {}
    for entry in settings.models:
        label, _, spec = entry.partition("=") if "=" in entry else (None, "", entry)
        model = serve_model(label or spec, spec, settings, metrics)
        name = label or (spec if spec == model.forecaster.name else model.forecaster.name)
        if name in served:
            name = label or Path(spec).stem
        if name in served:
            raise ValueError(f"two served models are called {name!r}; name them with 'label=spec'")
        model.name = model.batcher.name = name
        served[name] = model
    return served
