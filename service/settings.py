"""Service settings: defaults < YAML file (``--config``) < environment (``NOWCAST_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


def _shipped() -> list[str]:
    from nowcast.forecaster import shipped_models

    return shipped_models()


#: an entry of ``models`` that stands for every shipped network (nowcast.forecaster.SHIPPED), best first,
#: so a config file serves the weights of the installed version without naming them
SHIPPED_ENTRY = "shipped"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOWCAST_", extra="forbid")

    store: str = Field("data/demo.zarr", description="Zarr archive for product requests (path or fsspec URL)")
    models: list[str] = Field(
        default_factory=lambda: ["persistence", "optical_flow", "sprog", *_shipped()],
        description=f"Served models: baseline names, checkpoint paths or shipped names ({SHIPPED_ENTRY!r}: "
                    "all of them); 'label=spec' renames",
    )
    api_keys: list[str] = Field(default_factory=list, description="When set, model and forecast routes need one")
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest request body")
    max_grid_pixels: int = Field(1024 * 1024, description="Largest H x W of a forecast")
    model_max_grid_pixels: dict[str, int] = Field(
        default_factory=dict,
        description="Per served model (by its name): the largest H x W of its forecasts, instead of the limit "
                    "its measured CPU cost gives within inference_timeout_s (docs/performance.md); never above "
                    "max_grid_pixels")
    max_lead_steps: int = Field(24, description="Most lead steps a request may ask for")
    micro_batching: bool = Field(True, description="Group concurrent requests into one forward pass")
    batch_wait_ms: float = Field(5.0, description="How long a request may wait for others to batch with")
    max_batch_size: int = Field(16, description="Most requests in one forward pass")
    inference_timeout_s: float = Field(60.0, description="Give up on a forecast after this long")
    max_queue: int = Field(64, description="Requests waiting per model; beyond it, 503 with Retry-After")
    max_inflight: int = Field(32, description="Forecast requests handled at once (parsing included); "
                                              "beyond it, 503 with Retry-After before the body is read")
    max_input_frames: int = Field(64, description="Most frames a request may send (checked before decoding)")
    max_thresholds: int = Field(8, ge=1, description="Most thresholds of one probability forecast")
    max_members: int = Field(50, ge=1, description="Most ensemble members one forecast may ask for")
    default_members: int = Field(20, ge=1, description="Members of an ensemble (or of the probabilities counted "
                                                       "over one) when the request does not say")
    max_ensemble_values: int = Field(
        16 * 1024 * 1024, ge=1, description="Most members (or thresholds) x leads x pixels in one probability or "
                                            "ensemble forecast: what bounds its memory (8 bytes each inside STEPS)")
    device: str = Field("auto", description="'auto' (GPU when there is one), 'cpu' or 'cuda'")
    precision: Literal["32", "bf16"] = Field(
        "32", description="'bf16' runs the networks under bfloat16 autocast: for GPUs (and CPUs with AVX-512 BF16 "
                          "or AMX); elsewhere it is emulated and slow")
    registry: str | None = Field(
        None, description="Model store (nowcast train --registry): its production version is served as 'production'")
    reload_interval_s: float = Field(5.0, description="How often to check the model store's production pointer")
    verify_forecasts: bool = Field(
        True, description="Keep every whole-grid forecast made from the archive and score it once its leads "
                          "are ingested (GET /v1/skill, the nowcast_skill_* gauges)")
    verification_interval_s: float = Field(30.0, gt=0, description="How often to look for newly observed leads")
    verification_grace_minutes: float = Field(
        120.0, ge=0, description="How long past its last lead a forecast waits for missing observations")
    skill_hours: float = Field(24.0, gt=0, description="Window of the nowcast_skill_* gauges")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Close a connection whose request headers are not all in this many seconds after "
                                "its first byte (slow-header clients)")
    max_connections: int = Field(
        1000, ge=1, description="Concurrent connections (and requests) served; beyond it, 503 at once")

    @field_validator("models")
    @classmethod
    def _expand_shipped(cls, models: list[str]) -> list[str]:
        """``shipped`` becomes the shipped names the list does not name itself."""
        named = set(models)
        expanded: list[str] = []
        for entry in models:
            if entry == SHIPPED_ENTRY:
                expanded += [m for m in _shipped() if m not in named and m not in expanded]
            else:
                expanded.append(entry)
        return expanded


def load_settings(config: Path | None = None, **overrides: object) -> ServiceSettings:
    """Settings from an optional YAML file, then the environment, then explicit overrides."""

    class FromFile(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="NOWCAST_", extra="forbid", yaml_file=config)

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources = [init_settings, env_settings]
            if config is not None:
                sources.append(YamlConfigSettingsSource(settings_cls))
            return tuple(sources)

    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"service config {config} does not exist")
    return ServiceSettings(**FromFile(**overrides).model_dump())
