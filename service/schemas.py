"""Request and response bodies (the JSON shapes of the API contract, plus documented extras)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator, model_validator

#: a JSON number: "3" and true are refused, not coerced (a client sending them has a bug to see)
Number = StrictFloat | StrictInt
#: product names are folder names in the store: short and plain
PRODUCT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: valid times outside these years are a client's bug, not radar
YEARS = (1900, 2200)


class ForecastRequest(BaseModel):
    """Either inline ``frames`` (T x H x W in mm/h, oldest first) or a ``product`` of the archive."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "persistence", "lead_steps": 3, "frames": [[[0.0, 1.5], [2.0, 0.0]]] * 3,
         "step_minutes": 5, "end_time": "2016-09-28T15:00:00Z"},
        {"model": "optical_flow", "lead_steps": 6, "product": "fmi"},
    ]})

    model: str = Field(max_length=200, description="A name from GET /v1/models")
    lead_steps: StrictInt = Field(ge=1, description="How many steps ahead (at most the model's max_lead_steps)")
    frames: list[list[list[Number | None]]] | None = Field(
        None, description="T x H x W rain rate, mm/h, oldest first; null = nodata (outside the radar's coverage)")
    step_minutes: Number | None = Field(None, gt=0, le=1440, description="Spacing of the inline frames")
    end_time: datetime | None = Field(None, description="Valid time (UTC) of the last inline frame")
    times: list[datetime] | None = Field(None, description="Optional valid time of every inline frame")
    product: str | None = Field(None, pattern=PRODUCT_PATTERN, description="Product in the service's archive")
    time: datetime | None = Field(None, description="Last frame to use (default: the latest in the archive)")
    bbox: list[Number] | None = Field(
        None, min_length=4, max_length=4,
        description="Crop [x_min, y_min, x_max, y_max] in the product's CRS (product requests)",
    )
    auxiliary: dict[str, list[list[list[Number | None]]]] | None = Field(
        None, max_length=16,
        description="Inline frames of a multi-source model's auxiliary products (its input_products in "
                    "GET /v1/models): per product T x H x W mm/h on the frames' grid at the frames' times; "
                    "null = no value. Product requests read them from the archive instead.",
    )
    output: Literal["deterministic", "probability", "ensemble"] = Field(
        "deterministic", description="deterministic: one field per lead (frames); probability: P(rate >= threshold) "
                                     "per lead and threshold (probabilities); ensemble: members. The model must list "
                                     "it in its outputs (GET /v1/models)")
    thresholds: list[Number] | None = Field(
        None, min_length=1, max_length=1000,
        description="probability output: rain rates in mm/h (at most the service's max_thresholds)")
    members: StrictInt | None = Field(
        None, ge=1, description="ensemble output (and probabilities counted over members): how many; default the "
                                "service's default_members, at most its max_members")

    @field_validator("end_time", "time")
    @classmethod
    def plausible_time(cls, value: datetime | None) -> datetime | None:
        if value is not None and not YEARS[0] <= value.year <= YEARS[1]:
            raise ValueError(f"year {value.year} is outside {YEARS[0]}-{YEARS[1]}")
        return value

    @field_validator("times")
    @classmethod
    def plausible_times(cls, values: list[datetime] | None) -> list[datetime] | None:
        for value in values or []:
            cls.plausible_time(value)
        return values

    @model_validator(mode="after")
    def one_source(self) -> ForecastRequest:
        if (self.frames is None) == (self.product is None):
            raise ValueError("give either 'frames' (inline) or 'product' (from the archive), not both or neither")
        if self.frames is not None and self.end_time is None:
            raise ValueError("inline frames need 'end_time' (valid time of the last frame)")
        if self.auxiliary is not None and self.frames is None:
            raise ValueError("'auxiliary' goes with inline 'frames'; a product request reads them from the archive")
        if self.bbox is not None and (self.bbox[0] >= self.bbox[2] or self.bbox[1] >= self.bbox[3]):
            raise ValueError("bbox must be [x_min, y_min, x_max, y_max] with min < max")
        return self


class GridInfo(BaseModel):
    ny: int
    nx: int
    crs: str | None = Field(None, description="PROJ string (product requests)")
    x: list[float] | None = Field(None, description="Pixel-centre x coordinates (product requests)")
    y: list[float] | None = Field(None, description="Pixel-centre y coordinates (product requests)")


class ForecastTimes(BaseModel):
    """What every forecast answer starts with: the model, the unit and the times of its leads."""

    model: str
    identity: str | None = Field(None, description="The model's identity (GET /v1/models): its name plus a "
                                                   "short fingerprint of its weights")
    units: str = "mm/h"
    init_time: str
    step_minutes: float
    lead_minutes: list[float]
    times: list[str]


class ForecastResponse(ForecastTimes):
    frames: list[list[list[float | None]]]  # null where the forecast is nodata (outside the last frame's coverage)
    grid: GridInfo


class ProbabilityForecastResponse(ForecastTimes):
    """``"output": "probability"``: P(rain rate >= threshold), 0..1."""

    output: Literal["probability"] = "probability"
    thresholds: list[float] = Field(description="mm/h, as requested")
    members: int | None = Field(description="Members the probabilities were counted over (null: the model's own)")
    probabilities: list[list[list[list[float | None]]]] = Field(
        description="[lead][threshold][y][x] in 0..1; null where there is no radar (the last frame's nodata)")
    grid: GridInfo


class EnsembleForecastResponse(ForecastTimes):
    """``"output": "ensemble"``: equally likely futures, mm/h."""

    output: Literal["ensemble"] = "ensemble"
    members: list[list[list[list[float | None]]]] = Field(
        description="[member][lead][y][x] mm/h; null where there is no radar (the last frame's nodata)")
    grid: GridInfo


class GridLimits(BaseModel):
    multiple_of: int = Field(description="Frame sizes the model takes (1: any; frames are padded inside)")
    max_pixels: int = Field(description="Largest H x W a request may send at the model's own leads")
    limited_by: Literal["max_grid_pixels", "model_max_grid_pixels", "cpu_cost"] = Field(
        "max_grid_pixels", description="What sets max_pixels: the service's max_grid_pixels, the model's entry "
                                       "in model_max_grid_pixels, or (cpu_cost) what the model can forecast on "
                                       "this CPU within half of inference_timeout_s by its measured cost; more "
                                       "leads than its own lower it in proportion")


class ModelInfo(BaseModel):
    """One served model: what it needs, what it gives, where it came from and how good it is."""

    name: str = Field(description="The name requests use")
    identity: str = Field(description="What its forecasts are recorded and verified as (GET /v1/skill): the name "
                                      "plus a short fingerprint of the weights (name@1a2b3c4d5e6f); a baseline's "
                                      "name alone")
    fingerprint: str | None = Field(description="sha256 of the network's weights and post-processing (null: "
                                                "baseline); the same weights give the same one under any name")
    architecture: str = Field(description="Registered model name (convlstm, optical_flow, ...)")
    kind: Literal["network", "baseline"]
    input_steps: int = Field(description="Frames the model reads at its own step")
    max_lead_steps: int = Field(description="Most lead steps a request may ask for")
    trained_output_steps: int | None = Field(description="Lead steps a network was trained for (null: baseline)")
    step_minutes: float | None = Field(description="The network's step; null: a baseline works at any step")
    fixed_step: bool = Field(description="True when frames at other steps are resampled in time")
    grid: GridLimits
    parameters: int
    source: str = Field(description="Checkpoint path, or 'baseline'")
    version: str | None = Field(description="The model store's version (the production model)")
    training_data: dict[str, Any] | None = Field(description="Products, time range and step it was trained on")
    skill: dict[str, Any] | None = Field(description="Recorded verification scores (model store or model card)")
    probability_matching: Literal["none", "cdf", "cdf_wet"] = Field(
        "none", description="How forecasts are post-processed: cdf, each lead's values matched to the last observed "
                            "frame's distribution; cdf_wet, only the intensities inside the forecast's area of 1 mm/h "
                            "matched (the area kept); none (chosen on validation for shipped networks)")
    input_products: list[str] = Field(
        default_factory=list,
        description="Auxiliary products a multi-source network reads beside the requested product, in "
                    "order; empty: the requested product alone")
    outputs: list[Literal["deterministic", "probability", "ensemble"]] = Field(
        default_factory=lambda: ["deterministic"],
        description="What a forecast request may ask for as its 'output' (probability, ensemble: steps, or a "
                    "probabilistic network)")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    detail: str


# -- the viewer's read endpoints (service/routers/products.py) ---------------------------------


class ProbabilityScale(BaseModel):
    """The colour scale of probability maps (``pipelines.plots``): P(rate >= threshold) in classes of 0.1."""

    levels: list[float] = Field(description="Class boundaries; colours[k] covers levels[k] <= p < levels[k+1] "
                                            "(the last class includes 1)")
    colours: list[str] = Field(description="One colour per class, as #rrggbb")
    nodata: str = Field(description="Colour of nodata (no radar at the init time): not a probability of 0")
    below: str = Field("transparent", description="Below levels[0] (under 0.1): transparent in the PNGs")


class ColourScale(BaseModel):
    """The rain-rate colour scale of every picture (``pipelines.plots``), so a client's legend matches."""

    units: str = "mm/h"
    levels: list[float] = Field(description="Class boundaries; colours[k] covers levels[k] <= rate < levels[k+1]")
    colours: list[str] = Field(description="One colour per class, as #rrggbb")
    max_mm_h: float = Field(description="Top of the last class (ingest masks higher rates as clutter)")
    over: str = Field(description="Colour above max_mm_h")
    nodata: str = Field(description="Colour of nodata (outside the radar's coverage)")
    dry: str = Field("transparent", description="Below levels[0]: transparent in frame PNGs")


class GraticuleLine(BaseModel):
    """One parallel or meridian in the product's pixel space, for drawing over its frames."""

    kind: Literal["lat", "lon"]
    value: float = Field(description="Latitude or longitude in degrees")
    label: str
    segments: list[list[list[float]]] = Field(
        description="Polylines of [column, row] in pixels from the grid's top-left corner (0..nx, 0..ny)")
    label_at: list[float] | None = Field(None, description="[column, row] of a point on the line inside the grid")


class ProductGrid(BaseModel):
    ny: int
    nx: int
    crs: str = Field(description="PROJ string")
    units: str = Field(description="'m' (projected) or 'degrees'")
    dx: float
    dy: float
    x_range: list[float] = Field(description="[west, east] outer pixel edges in the CRS")
    y_range: list[float] = Field(description="[south, north] outer pixel edges in the CRS")
    corners_lonlat: dict[str, list[float] | None] = Field(
        description="[lon, lat] of the outer corners top_left, top_right, bottom_left, bottom_right "
                    "(null where off the Earth, e.g. a geostationary disk)")


class ProductInfo(BaseModel):
    """One archive product: its time range, step and grid, and a graticule to draw over it."""

    name: str
    frames: int
    first_time: str | None
    last_time: str | None
    step_minutes: float | None
    grid: ProductGrid
    graticule: list[GraticuleLine]


class DamagedProductInfo(BaseModel):
    """A product that cannot be read (``nowcast store check`` names the damage; ``--repair`` mends it)."""

    name: str
    error: str


class ProductsResponse(BaseModel):
    products: list[ProductInfo]
    colour_scale: ColourScale
    probability_scale: ProbabilityScale = Field(description="The colours of probability maps "
                                                            "(POST /v1/forecast/frames with output probability)")
    damaged: list[DamagedProductInfo] = Field(default_factory=list,
                                              description="Products left out because their data is damaged")


class ProductTimesResponse(BaseModel):
    product: str
    step_minutes: float | None
    times: list[str] = Field(description="Valid times (UTC), oldest first: the newest `limit` in [start, end]")
    truncated: bool = Field(description="True when older times in [start, end] were left out")


class ForecastFramesResponse(ForecastTimes):
    """A forecast as one picture per lead: what a viewer animates, at a fraction of the JSON's size."""

    output: Literal["deterministic", "probability"] = Field(
        "deterministic", description="deterministic: rain rate in the colour scale; probability: P(rate >= "
                                     "thresholds[0]) in the probability scale (GET /v1/products)")
    thresholds: list[float] | None = Field(None, description="probability: the one threshold drawn, mm/h")
    members: int | None = Field(None, description="probability: members it was counted over (null: the model's own)")
    frames: list[str] = Field(description="One PNG per lead (data: URL), 1 pixel per grid cell, row 0 = north; "
                                          "transparent where dry (probability: under 0.1), grey where nodata")
    grid: GridInfo = Field(description="ny, nx and (product requests) the CRS; no coordinates")


class LeadSkill(BaseModel):
    """Scores of one lead time, pooled over the window's verified forecasts (``nowcast evaluate``'s row)."""

    lead_minutes: float
    n_cases: int = Field(description="Verified forecasts pooled at this lead")
    csi: dict[str, float | None] = Field(description="Critical success index per threshold (mm/h, as text)")
    pod: dict[str, float | None] = Field(description="Probability of detection per threshold")
    far: dict[str, float | None] = Field(description="False alarm ratio per threshold")
    hits: dict[str, int]
    misses: dict[str, int]
    false_alarms: dict[str, int]
    mae_mm_h: float | None = Field(description="Mean absolute error over valid pixels")
    fss_1mm_10km: float | None = Field(description="Fractions skill score, 1 mm/h, 10 km neighbourhood")
    n_probabilistic_cases: int | None = Field(None, description="Probability forecasts pooled at this lead "
                                                                "(null: the model kept none)")
    brier: dict[str, float | None] | None = Field(
        None, description="Brier score of the probability forecasts per threshold (mm/h, as text; 0 is perfect); "
                          "null for a model without them")
    roc_area: dict[str, float | None] | None = Field(None, description="Area under the ROC curve per threshold")
    crps: float | None = Field(None, description="CRPS (mm/h) where members were kept; null: the ledger keeps "
                                                 "probabilities at a few thresholds, which give none")


class ModelSkill(BaseModel):
    model: str = Field(description="The served name (or the backfill store's model); where two rows share a "
                                   "name, each shows its identity instead")
    identity: str | None = Field(None, description="What the row's forecasts were recorded as: the name plus a "
                                                   "short fingerprint of the weights (GET /v1/models); one row each")
    fingerprint: str | None = Field(None, description="That short fingerprint (null: a baseline)")
    n_cases: int = Field(description="Forecasts scored in the window")
    n_dry_cases_skipped: int = Field(description="Forecasts from a dry init frame, left out as evaluate does")
    n_missing_observations: int = Field(description="Forecasts given up: observations of a lead never came")
    n_other_settings: int = Field(0, description="Forecasts scored with other thresholds, FSS window or step "
                                                 "than the newest (an older release): left out of the scores")
    n_probabilistic_cases: int = Field(0, description="Probability forecasts scored in the window (Brier, ROC "
                                                      "area: a probabilistic model's probability requests)")
    first_init: str
    last_init: str
    scores: list[LeadSkill]


class SkillResponse(BaseModel):
    """Rolling verification of the forecasts made from one product (GET /v1/skill)."""

    product: str
    hours: float
    start: str | None = Field(description="Window start (exclusive), UTC: end minus hours")
    end: str | None = Field(description="Window end (inclusive), UTC: the product's newest frame unless given")
    models: list[ModelSkill] = Field(description="Per model, sorted by name; empty until a forecast is verified")
    pending: dict[str, int] = Field(description="Forecasts per model waiting for the observations of their leads")
    unreadable_records: dict[str, Any] | None = Field(
        None, description="Records that could not be read (damaged): left out of the scores, counted, the first "
                          "few named; the next verification pass rewrites those it can score again")
