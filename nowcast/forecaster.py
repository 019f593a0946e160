"""Load any forecaster by name or checkpoint and run it in mm/h: the one entry for users.

``load_forecaster("persistence")`` (any baseline: ``optical_flow``, ``optical_flow_smooth``,
``sprog``), ``load_forecaster("runs/convlstm/checkpoints/last.ckpt")`` or a shipped model name
(``convlstm``, ``convlstm_flow``, ...) whose weights are packaged in ``nowcast/weights/<name>.ckpt``.

Forecasts are honest about coverage: nodata (NaN) in the input is never read as rain, and
wherever the last observed frame is nodata the forecast is nodata (NaN) too. Frames of any size
are accepted: a network whose patching needs a multiple of ``p`` pixels gets the frame padded
(as dry) and the forecast cropped back.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nowcast.ensembles import check_thresholds, exceedance_probabilities, model_outputs
from nowcast.models import BASELINES, MODELS, MOTION_BASELINES, get_model, model_class
from nowcast.models.base import Forecaster
from nowcast.postprocessing import check_probability_matching, post_process
from pipelines.channels import AuxiliarySpec, MissingChannel, encode_channels
from pipelines.normalization import RainNormalizer
from pipelines.time_interpolation import TIME_INTERPOLATIONS, interpolate_in_time, motion_per_minute

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the most lead steps a baseline offers (2 h at 5 min); a network offers what it was trained for
BASELINE_MAX_LEAD_STEPS = 24
#: lead steps of a baseline forecast when the caller does not say (1 h at 5 min)
DEFAULT_LEAD_STEPS = 12
#: the precisions a network may run at: float32, or bfloat16 autocast (GPUs, CPUs with AVX-512 BF16/AMX)
PRECISIONS = ("32", "bf16")


#: overlap of neighbouring tiles (pixels) where their forecasts are blended
TILE_OVERLAP = 32
#: tiles run in one forward pass (stacked on the batch axis): fewer, larger matrix products
TILE_BATCH = 16


def tile_starts(size: int, tile: int) -> list[int]:
    """Tile origins covering ``size`` with tiles of ``tile`` overlapping by at least TILE_OVERLAP."""
    if size <= tile:
        return [0]
    stride = tile - TILE_OVERLAP
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def tent(n: int) -> torch.Tensor:
    """Blending weights: rising over TILE_OVERLAP pixels from each edge, 1 inside."""
    ramp = torch.minimum(torch.arange(1, n + 1), torch.arange(n, 0, -1)).float()
    return torch.clamp(ramp / TILE_OVERLAP, max=1.0)


#: every network whose weights ship in the package, best first by validation CSI at 1 mm/h, 30 min:
#: the demo and the pysteps plugin's default use the first; ``make weights`` trains them and the
#: model card and docs/skill.md list them in this order
#: (``*_pretrained``: the plain networks started from their TAASRAD19 weights, shipped where validation preferred them;
#: the probabilistic ``convlstm_exceedance`` and ``convlstm_sprog_exceedance`` last, so that the demo and the plugin
#: default stay deterministic)
SHIPPED = ("convlstm_sprog", "convlstm_flow", "sa_convlstm_flow", "predrnn_flow", "convlstm", "sa_convlstm", "predrnn",
           "convlstm_pretrained", "predrnn_pretrained", "convlstm_exceedance", "convlstm_sprog_exceedance")
#: networks trained on the long TAASRAD19 archive (64 x 64 pixels of 3.75 km, 5 min): shipped weights
#: named after the archive, each a registered architecture (its checkpoint says which)
#: (``convlstm_exceedance_taasrad19`` is the probabilistic one: exceedance probabilities, nowcast/models/exceedance.py)
SHIPPED_TAASRAD19 = ("convlstm_taasrad19", "predrnn_taasrad19", "sa_convlstm_taasrad19",
                     "convlstm_exceedance_taasrad19", "convlstm_sprog_taasrad19", "convlstm_flow_taasrad19")


def shipped_models(archive: str | None = None) -> list[str]:
    """Networks whose trained weights are in the package: SHIPPED's order, then any other registered
    network with a checkpoint in ``nowcast/weights`` (by name). ``archive="taasrad19"`` names those
    trained on the TAASRAD19 archive instead (``SHIPPED_TAASRAD19``)."""
    if archive == "taasrad19":
        return [n for n in SHIPPED_TAASRAD19 if (WEIGHTS_DIR / f"{n}.ckpt").is_file()]
    names = [n for n in SHIPPED if (WEIGHTS_DIR / f"{n}.ckpt").is_file()]
    return names + sorted(n for n in MODELS if n not in SHIPPED and (WEIGHTS_DIR / f"{n}.ckpt").is_file())


def shipped_names() -> list[str]:
    """Every name a shipped weight file answers to (``nowcast/weights/<name>.ckpt``)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.ckpt"))


@dataclass
class LoadedForecaster:
    name: str
    model: Forecaster
    input_steps: int
    max_lead_steps: int
    step_minutes: float | None
    normalizer: RainNormalizer
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    #: "32", or "bf16": the network's convolutions under bfloat16 autocast; inputs, the hybrids'
    #: optical flow and the output stay float32 (docs/performance.md measures what it costs in skill)
    precision: str = "32"
    #: how frames at another time step are brought to the network's: "motion" (motion-compensated,
    #: no ghosting) or "linear" (``pipelines.time_interpolation``; docs/skill.md compares them)
    time_interpolation: str = "motion"
    #: "none", "cdf" (each lead's values matched to the last observation's distribution) or "cdf_wet"
    #: (only the intensities inside the forecast's 1 mm/h area matched)
    #: (``nowcast.postprocessing``); a shipped network carries the choice made for it on validation
    probability_matching: str = "none"
    #: sha256 of the network's weights and post-processing (None for a baseline): what tells two
    #: checkpoints that share a name apart wherever forecasts are recorded (``identity``)
    fingerprint: str | None = None

    @property
    def identity(self) -> str:
        """The name plus a short content fingerprint (``convlstm@1a2b3c4d5e6f``): forecasts of two
        different networks never share one, whatever they are called; a baseline is its name."""
        return model_identity(self.name, self.fingerprint)

    @property
    def trainable(self) -> bool:
        """A network (a baseline may be served or evaluated under another name)."""
        return self.source != "baseline" and self.name not in BASELINES

    @property
    def architecture(self) -> str:
        """The registered model this forecaster runs (a shipped ``convlstm_taasrad19`` is a ``convlstm``)."""
        return str(self.info.get("model", self.name))

    @property
    def size_multiple(self) -> int:
        """Frame sizes the network takes: multiples of its patch size."""
        return int(getattr(self.model, "patch", 1))

    @property
    def default_lead_steps(self) -> int:
        """Leads when the caller does not say: a network's trained output steps, else DEFAULT_LEAD_STEPS."""
        return self.max_lead_steps if self.trainable else DEFAULT_LEAD_STEPS

    @property
    def auxiliary(self) -> list[AuxiliarySpec]:
        """Auxiliary products the network reads beside the target (``pipelines.channels``)."""
        return [AuxiliarySpec.from_dict(item) for item in self.info.get("auxiliary", [])]

    @property
    def input_products(self) -> list[str]:
        """What a forecast reads: the target product (any, named by the caller), then these."""
        return [spec.product for spec in self.auxiliary]

    def _auxiliary_frames(self, auxiliary: dict[str, np.ndarray] | None, shape: tuple[int, ...]) -> list[np.ndarray]:
        """The caller's auxiliary frames in the checkpoint's order, each shaped like the target's."""
        given = auxiliary or {}
        frames = []
        for spec in self.auxiliary:
            if spec.product not in given:
                raise MissingChannel(spec.product, f"{self.name} reads auxiliary product {spec.product!r} beside the "
                                                   "target; none was given")
            array = np.asarray(given[spec.product], dtype=np.float32)
            array = array[None] if array.ndim == len(shape) - 1 else array
            if array.shape[0] != shape[0] or array.shape[-2:] != shape[-2:] or array.shape[1] < shape[1]:
                raise ValueError(f"auxiliary {spec.product!r} frames have shape {array.shape}; they must match the "
                                 f"target's {shape} (same grid, one frame per target time)")
            frames.append(array[:, -shape[1] :])
        return frames

    def resamples(self, step_minutes: float | None) -> bool:
        """True when frames at ``step_minutes`` must be resampled to the model's step."""
        return not (self.step_minutes is None or step_minutes is None or abs(step_minutes - self.step_minutes) < 1e-6)

    @property
    def hybrid(self) -> bool:
        """A network correcting a baseline's forecast (``convlstm_flow``, ``convlstm_sprog``, ...)."""
        return bool(getattr(self.model, "motion", False))

    def frames_needed(self, step_minutes: float | None = None) -> int:
        """Input frames at the data's step that cover the model's history (resampled: and, for a
        hybrid, the history its baseline needs at the product's own step)."""
        if not self.resamples(step_minutes):
            return self.input_steps
        needed = math.ceil((self.input_steps - 1) * self.step_minutes / step_minutes - 1e-9) + 1
        return max(needed, self.model.min_input_steps) if self.native_baseline else needed

    @property
    def native_baseline(self) -> bool:
        """A hybrid whose baseline fits a model of time at the frames' step (S-PROG): on a product at
        another step that baseline runs on the product's own frames (``_native_baseline``)."""
        return self.hybrid and model_class(self.model.baseline).fitted_in_time

    def _native_baseline(self, batch: np.ndarray, step_minutes: float, model_leads: int,
                         velocity: np.ndarray | None) -> np.ndarray:
        """A hybrid's baseline forecast run on the product's own frames at its own step, then brought
        to the model's lead times. S-PROG's AR(2) fitted on resampled history filters the small scales
        less: on a 15-minute product it scores 0.565 instead of 0.586 (bench/resampled_baselines.py);
        optical flow scores the same either way, so the flow hybrids keep reading resampled history."""
        baseline = model_class(self.model.baseline)(self.normalizer.to_dict())
        model_step = float(self.step_minutes)
        leads = math.ceil(model_leads * model_step / step_minutes - 1e-9)
        native = np.stack([np.nan_to_num(baseline.forecast_mm_h(sample.astype(np.float64), leads), nan=0.0)
                           for sample in batch]).astype(np.float32)
        sequence = np.concatenate([np.nan_to_num(batch[:, -1:], nan=0.0), native], axis=1)
        return interpolate_in_time(sequence, step_minutes, model_step * np.arange(1, model_leads + 1), origin=0,
                                   method=self.time_interpolation, velocity=velocity)

    @torch.no_grad()
    def predict(self, frames_mm_h: np.ndarray, lead_steps: int, step_minutes: float | None = None,
                auxiliary: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """[..., T, H, W] mm/h (NaN = nodata) -> [..., lead_steps, H, W] mm/h, NaN where the last frame is.

        ``step_minutes``: the frames' time step, when it differs from the one the network was trained
        at (a 2-, 6- or 10-minute product for a 5-minute model). The history is then interpolated
        in time to the model's step (``time_interpolation``: along the frames' motion by default), the
        network forecasts at its own step, and its leads are interpolated back to the product's
        (docs/skill.md measures what that costs).

        ``auxiliary``: for a multi-source network, each product of ``input_products`` as frames on
        the target's grid at the target's times ([..., T, H, W] mm/h, NaN where it has no value;
        ``pipelines.channels.AuxiliaryReader`` reads them from an archive).
        """
        if lead_steps < 1:
            raise ValueError("lead_steps must be at least 1")
        frames = np.asarray(frames_mm_h, dtype=np.float32)
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        needed = self.frames_needed(step_minutes)
        if batch.shape[1] < needed:
            raise ValueError(f"{self.name} needs {needed} input frames, got {batch.shape[1]}")
        batch = batch[:, -needed:]
        extra = self._auxiliary_frames(auxiliary, batch.shape)
        if self.resamples(step_minutes):
            model_step, method = float(self.step_minutes), self.time_interpolation
            # one motion field (px/min) from the product's own frames carries both ways: the history
            # onto the model's step, and the model's leads back onto the product's
            velocity = motion_per_minute(batch, step_minutes) if method == "motion" else None
            at = -model_step * np.arange(self.input_steps)[::-1]
            history = interpolate_in_time(batch, step_minutes, at, method=method, velocity=velocity)
            # auxiliary products (satellite, ...) move with their own motion, not the radar's: per pixel
            extra = [interpolate_in_time(frames, step_minutes, at, method="linear") for frames in extra]
            model_leads = math.ceil(lead_steps * step_minutes / model_step - 1e-9)
            native = (self._native_baseline(batch, step_minutes, model_leads, velocity)
                      if self.native_baseline else None)
            out = self._predict(history, model_leads, extra, native)
            sequence = np.concatenate([history[:, -1:], out], axis=1)  # time 0 is the last observation
            rain = interpolate_in_time(sequence, model_step, step_minutes * np.arange(1, lead_steps + 1),
                                       origin=0, method=method, velocity=velocity)
            rain = np.where(np.isnan(batch[:, -1])[:, None], np.float32(np.nan), rain).astype(np.float32)
        else:
            rain = self._predict(batch, lead_steps, extra)
        rain = post_process(self.probability_matching, rain, batch[:, -1])
        return rain[0] if single else rain

    @property
    def outputs(self) -> list[str]:
        """What the model answers (``nowcast.ensembles``): "deterministic", and "probability" and
        "ensemble" when its class offers them (``steps``; a probabilistic network)."""
        return model_outputs(self.model)

    def _probabilistic_input(self, frames_mm_h: np.ndarray, lead_steps: int, step_minutes: float | None,
                             output: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray, bool]:
        """Normalised, padded model input [B, T, 1, H', W'] for a probabilistic output, the nodata mask
        of the last frame [B, H, W], the frames kept and whether one sample was given."""
        if output not in self.outputs:
            raise ValueError(f"{self.name} offers {', '.join(self.outputs)} output, not {output!r}")
        if lead_steps < 1:
            raise ValueError("lead_steps must be at least 1")
        if self.resamples(step_minutes) or self.auxiliary:
            raise ValueError(f"{output} output needs frames at {self.name}'s own step and no auxiliary products")
        frames = np.asarray(frames_mm_h, dtype=np.float32)
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        if batch.shape[1] < self.input_steps:
            raise ValueError(f"{self.name} needs {self.input_steps} input frames, got {batch.shape[1]}")
        batch = batch[:, -self.input_steps :]
        z = self.normalizer.forward(torch.from_numpy(np.nan_to_num(batch, nan=0.0)))[:, :, None].float()
        m = self.size_multiple
        z = F.pad(z, (0, -z.shape[-1] % m, 0, -z.shape[-2] % m))  # dry pad, cropped off again
        device = next(self.model.parameters(), torch.empty(0)).device
        return z.to(device), np.isnan(batch[:, -1]), batch, single

    @torch.no_grad()
    def predict_ensemble(self, frames_mm_h: np.ndarray, lead_steps: int, members: int | None = None,
                         step_minutes: float | None = None) -> np.ndarray:
        """[..., T, H, W] mm/h (NaN = nodata) -> [..., members, lead_steps, H, W] mm/h, NaN where the last
        frame is; ``members`` None: the model's default (``steps``: 20)."""
        z, nodata, batch, single = self._probabilistic_input(frames_mm_h, lead_steps, step_minutes, "ensemble")
        ny, nx = nodata.shape[-2:]
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model.forward_ensemble(z, lead_steps, members)
        rain = self.normalizer.inverse(out[:, :, :, 0, :ny, :nx].float()).cpu().numpy()
        rain = np.where(nodata[:, None, None], np.float32(np.nan), rain).astype(np.float32)
        # each member matched, as the deterministic forecast is
        last = np.broadcast_to(batch[:, None, -1], rain.shape[:2] + (ny, nx))
        rain = post_process(self.probability_matching, rain, last)
        return rain[0] if single else rain

    @torch.no_grad()
    def predict_probabilities(self, frames_mm_h: np.ndarray, lead_steps: int, thresholds: list[float],
                              members: int | None = None, step_minutes: float | None = None) -> np.ndarray:
        """[..., T, H, W] mm/h -> [..., lead_steps, len(thresholds), H, W]: P(rate >= threshold) in 0..1,
        NaN where the last frame is nodata. From the model's own ``forward_probabilities`` when it has
        one, else counted over ``members`` members (``nowcast.ensembles.exceedance_probabilities``)."""
        thresholds = check_thresholds(thresholds)
        if not callable(getattr(self.model, "forward_probabilities", None)):
            return exceedance_probabilities(self.predict_ensemble(frames_mm_h, lead_steps, members, step_minutes),
                                            thresholds)
        z, nodata, _, single = self._probabilistic_input(frames_mm_h, lead_steps, step_minutes, "probability")
        ny, nx = nodata.shape[-2:]
        levels = self.normalizer.forward(torch.tensor(thresholds, dtype=torch.float32)).to(z.device)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model.forward_probabilities(z, lead_steps, levels)
        p = out[..., :ny, :nx].float().clamp(0.0, 1.0).cpu().numpy()
        p = np.where(nodata[:, None, None], np.float32(np.nan), p).astype(np.float32)
        return p[0] if single else p

    def _forward(self, z: torch.Tensor, lead_steps: int, ext: torch.Tensor | None = None) -> torch.Tensor:
        """The network on [B, T, C, H, W]; in overlapping tiles for models whose cost is quadratic in the
        grid (``attention_tile``: self-attention over every position), blended with tent weights.
        A hybrid's extrapolation (``ext``) covers the whole grid, so motion sees everything."""
        tile = getattr(self.model, "attention_tile", None)
        ny, nx = z.shape[-2:]
        if tile is None or (ny <= tile and nx <= tile):
            return self.model(z, lead_steps, **({} if ext is None else {"extrapolation": ext}))
        out = z.new_zeros(z.shape[0], lead_steps, getattr(self.model, "out_channels", z.shape[2]), ny, nx)
        total = z.new_zeros(ny, nx)
        th, tw = min(tile, ny), min(tile, nx)
        weight = torch.outer(tent(th), tent(tw)).to(z)
        origins = [(y0, x0) for y0 in tile_starts(ny, tile) for x0 in tile_starts(nx, tile)]
        b = z.shape[0]
        # TILE_BATCH tiles per forward pass, stacked on the batch axis: on CPU one pass over 16 tiles
        # costs a fifth of 16 passes (sa_convlstm, 352 x 352: 17 instead of 88 CPU seconds)
        for i in range(0, len(origins), TILE_BATCH):
            group = origins[i : i + TILE_BATCH]
            tiles = torch.cat([z[..., y0 : y0 + th, x0 : x0 + tw] for y0, x0 in group])
            kwargs = ({"extrapolation": torch.cat([ext[..., y0 : y0 + th, x0 : x0 + tw] for y0, x0 in group])}
                      if ext is not None else {})
            result = self.model(tiles, lead_steps, **kwargs)
            for k, (y0, x0) in enumerate(group):
                out[..., y0 : y0 + th, x0 : x0 + tw] += result[k * b : (k + 1) * b] * weight
                total[y0 : y0 + th, x0 : x0 + tw] += weight
        return out / total

    def _predict(self, batch: np.ndarray, lead_steps: int, auxiliary: list[np.ndarray] | None = None,
                 baseline_mm_h: np.ndarray | None = None) -> np.ndarray:
        """[B, input_steps, H, W] mm/h at the model's step (and its auxiliary frames, same shape)
        -> [B, lead_steps, H, W]. A hybrid computes its baseline's forecast from ``batch`` unless
        ``baseline_mm_h`` ([B, lead_steps, H, W], at the model's leads) gives it."""
        nodata = np.isnan(batch[:, -1])
        ny, nx = batch.shape[-2:]
        z = self.normalizer.forward(torch.from_numpy(np.nan_to_num(batch, nan=0.0)))[:, :, None]
        if auxiliary:
            z = torch.cat([z.float(), torch.from_numpy(encode_channels(batch, self.auxiliary, auxiliary))], dim=2)
        # a hybrid's extrapolation comes from the frames as given, before padding: the motion field
        # never sees the dry pad, and it is the very extrapolation the optical_flow baseline memoised
        ext = None
        if baseline_mm_h is not None:
            ext = self.normalizer.forward(torch.from_numpy(baseline_mm_h))[:, :, None].float()
        elif self.hybrid:
            ext = self.model.extrapolation_for(z, lead_steps, None)
        m = self.size_multiple
        pad_y, pad_x = -ny % m, -nx % m
        if pad_y or pad_x:
            z = F.pad(z, (0, pad_x, 0, pad_y))  # zeros: dry, and cropped away again below
            ext = None if ext is None else F.pad(ext, (0, pad_x, 0, pad_y))
        device = next(self.model.parameters(), torch.empty(0)).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self._forward(z.to(device), lead_steps, None if ext is None else ext.to(device))
        out = out[:, :, 0, :ny, :nx]
        rain = self.normalizer.inverse(out.float()).cpu().numpy()
        return np.where(nodata[:, None], np.float32(np.nan), rain)


#: hex digits of the fingerprint an identity carries (48 bits: no two of a user's models collide)
IDENTITY_DIGITS = 12


def model_identity(name: str, fingerprint: str | None) -> str:
    """``name@<fingerprint prefix>``; a baseline (no fingerprint) is its name alone."""
    return f"{name}@{fingerprint[:IDENTITY_DIGITS]}" if fingerprint else name


def weights_fingerprint(state: dict[str, torch.Tensor], post_processing: str = "none") -> str:
    """sha256 over the weights (names and values, in name order) and the post-process: the same
    weights answer with the same fingerprint whichever file or name they are loaded from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())
    if post_processing != "none":  # other forecasts from the same weights: another identity
        digest.update(f"probability_matching={post_processing}".encode())
    return digest.hexdigest()


def load_forecaster(spec: str, map_location: str | torch.device = "cpu", precision: str = "32",
                    time_interpolation: str = "motion", probability_matching: str | None = None) -> LoadedForecaster:
    """A baseline by name, a checkpoint path, or a shipped model name; ``precision`` "bf16" runs a
    network under bfloat16 autocast (baselines are numpy and ignore it); ``time_interpolation``
    says how a product at another time step is resampled ("motion" or "linear");
    ``probability_matching`` (one of ``postprocessing.PROBABILITY_MATCHING``) overrides the checkpoint's
    own choice (None: keep it; a baseline's is "none")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if time_interpolation not in TIME_INTERPOLATIONS:
        raise ValueError(f"time interpolation must be one of {', '.join(TIME_INTERPOLATIONS)}, "
                         f"got {time_interpolation!r}")
    if spec in BASELINES:
        normalizer = RainNormalizer()
        kwargs = {"normalization": normalizer.to_dict()} if spec in MOTION_BASELINES else {}
        return LoadedForecaster(spec, get_model(spec, **kwargs).eval(), model_class(spec).min_input_steps,
                                BASELINE_MAX_LEAD_STEPS, None, normalizer, "baseline",
                                probability_matching=check_probability_matching(probability_matching or "none"))
    path = Path(spec)
    shipped = not path.is_file() and (WEIGHTS_DIR / f"{spec}.ckpt").is_file()
    if shipped:
        path = WEIGHTS_DIR / f"{spec}.ckpt"
    elif not path.is_file() and spec in MODELS:
        raise FileNotFoundError(
            f"no shipped weights for {spec!r} yet ({WEIGHTS_DIR / f'{spec}.ckpt'}); pass a checkpoint path from "
            "`nowcast train`")
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a baseline ({', '.join(BASELINES)}), a shipped model "
                                f"({', '.join(shipped_names())}) nor a checkpoint file")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    info = checkpoint.get("nowcast")
    if info is None:
        raise ValueError(f"{path} is not a nowcast checkpoint (no 'nowcast' section)")
    model = get_model(info["model"], **info["model_kwargs"])
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    model.load_state_dict(state)
    matching = check_probability_matching(probability_matching or info.get("probability_matching", "none"))
    return LoadedForecaster(
        name=spec if shipped else info["model"], model=model.eval(), input_steps=int(info["t_in"]),
        max_lead_steps=int(info["t_out"]),
        step_minutes=info.get("step_minutes"), normalizer=RainNormalizer.from_dict(info["normalization"]),
        source=str(path), info=info, precision=precision, time_interpolation=time_interpolation,
        probability_matching=matching, fingerprint=weights_fingerprint(state, matching),
    )
