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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nowcast.models import BASELINES, MODELS, MOTION_BASELINES, get_model, model_class
from nowcast.models.base import Forecaster
from pipelines.normalization import RainNormalizer

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: lead steps a baseline offers when nothing else fixes it (2 h at 5 min)
DEFAULT_MAX_LEAD_STEPS = 24


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

    @property
    def trainable(self) -> bool:
        return self.name not in BASELINES

    @property
    def size_multiple(self) -> int:
        """Frame sizes the network takes: multiples of its patch size."""
        return int(getattr(self.model, "patch", 1))

    @torch.no_grad()
    def predict(self, frames_mm_h: np.ndarray, lead_steps: int) -> np.ndarray:
        """[..., T, H, W] mm/h (NaN = nodata) -> [..., lead_steps, H, W] mm/h, NaN where the last frame is."""
        if lead_steps < 1:
            raise ValueError("lead_steps must be at least 1")
        frames = np.asarray(frames_mm_h, dtype=np.float32)
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        if batch.shape[1] < self.input_steps:
            raise ValueError(f"{self.name} needs {self.input_steps} input frames, got {batch.shape[1]}")
        batch = batch[:, -self.input_steps :]
        nodata = np.isnan(batch[:, -1])
        ny, nx = batch.shape[-2:]
        z = self.normalizer.forward(torch.from_numpy(np.nan_to_num(batch, nan=0.0)))[:, :, None]
        m = self.size_multiple
        pad_y, pad_x = -ny % m, -nx % m
        if pad_y or pad_x:
            z = F.pad(z, (0, pad_x, 0, pad_y))  # zeros: dry, and cropped away again below
        device = next(self.model.parameters(), torch.empty(0)).device
        out = self.model(z.to(device), lead_steps)[:, :, 0, :ny, :nx]
        rain = self.normalizer.inverse(out.float()).cpu().numpy()
        rain = np.where(nodata[:, None], np.float32(np.nan), rain)
        return rain[0] if single else rain


def load_forecaster(spec: str, map_location: str | torch.device = "cpu") -> LoadedForecaster:
    """A baseline by name, a checkpoint path, or a shipped model name."""
    if spec in BASELINES:
        normalizer = RainNormalizer()
        kwargs = {"normalization": normalizer.to_dict()} if spec in MOTION_BASELINES else {}
        return LoadedForecaster(spec, get_model(spec, **kwargs).eval(), model_class(spec).min_input_steps,
                                DEFAULT_MAX_LEAD_STEPS, None, normalizer, "baseline")
    path = Path(spec)
    if not path.is_file() and spec in MODELS:
        path = WEIGHTS_DIR / f"{spec}.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"no shipped weights for {spec!r} yet ({path}); pass a checkpoint path from `nowcast train`"
            )
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a model name ({', '.join(MODELS)}) nor a checkpoint file")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    info = checkpoint.get("nowcast")
    if info is None:
        raise ValueError(f"{path} is not a nowcast checkpoint (no 'nowcast' section)")
    model = get_model(info["model"], **info["model_kwargs"])
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    model.load_state_dict(state)
    return LoadedForecaster(
        name=info["model"], model=model.eval(), input_steps=int(info["t_in"]), max_lead_steps=int(info["t_out"]),
        step_minutes=info.get("step_minutes"), normalizer=RainNormalizer.from_dict(info["normalization"]),
        source=str(path), info=info,
    )
