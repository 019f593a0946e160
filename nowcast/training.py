"""The training method: one LightningModule for every recurrent model (OpenSTL's "method").

It owns the loss, the scheduled-sampling schedule and the per-lead validation scores (the
optimiser and its schedule are the config's ``optimizer:``/``lr_scheduler:`` sections, with
``nowcast.train_cli.DEFAULT_OPTIMIZER`` when a config has none); the
network comes from the model registry by name. A checkpoint holds everything needed to forecast:
the model name and arguments, the input/output step counts, the time step and the
normalisation (``checkpoint["nowcast"]``), besides Lightning's own hyper-parameters.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from nowcast import __version__
from nowcast.contingency import contingency, csi
from nowcast.losses import balance_weights, mse_mae, pinball, soft_csi
from nowcast.models import BASELINES, get_model, model_class
from nowcast.models.fast_path import check_fast_path, set_fast_path
from nowcast.postprocessing import check_probability_matching
from pipelines.normalization import RainNormalizer

VALIDATION_THRESHOLDS = (1.0, 5.0)
#: pixel losses: HKO-7's balanced MSE + MAE, the unweighted one, and the pinball loss at ``quantile``
LOSSES = ("balanced", "mse_mae", "quantile")


class CheckpointMismatch(ValueError):
    """Resuming would train a different model or data from the checkpoint's: refuse, say why."""


class NowcastModule(pl.LightningModule):
    def __init__(
        self,
        model: str = "convlstm",
        model_kwargs: dict[str, Any] | None = None,
        t_in: int = 6,
        t_out: int = 6,
        loss: str = "balanced",
        quantile: float = 0.5,
        sampling: str = "scheduled",
        sampling_stop_steps: int = 5000,
        reverse_sampling_alpha: float = 2000.0,
        decouple_weight: float = 0.0,
        csi_weight: float = 0.0,
        csi_thresholds: tuple[float, ...] = VALIDATION_THRESHOLDS,
        csi_temperature: float = 0.02,
        teacher_weight: float = 0.0,
        init_weights: str | None = None,
        input_channels: int = 1,
        probability_matching: str = "none",
        fast_path: str = "eager",
    ):
        """``loss: quantile`` trains each pixel's ``quantile`` (``nowcast.losses.pinball``) instead of
        its mean. ``csi_weight`` adds a soft-CSI term (``nowcast.losses.soft_csi``) at ``csi_thresholds``
        (mm/h; ``csi_temperature`` in normalised units) to the pixel loss, so training aims at the
        score forecasters read. ``init_weights`` starts the network from another checkpoint's
        weights (a shipped ``.ckpt`` or a run's): fine-tuning, not resuming. ``input_channels`` above 1
        (set from ``data.auxiliary`` by ``nowcast train``) builds a network that reads the target and
        the auxiliary channels and forecasts the target alone. ``teacher_weight`` adds the pixel loss
        against a baseline's forecast (``data.teacher``) to the one against the observations: a network
        that reads only frames learns from a forecast smoother and more consistent than six days of
        observations can be. ``probability_matching`` does not change training: it is saved with the
        weights and says how their forecasts are post-processed (``nowcast.postprocessing``; chosen on
        the validation day, docs/skill.md). ``fast_path`` (``auto``, ``compile``, ``eager``) runs each recurrent
        cell step compiled (``nowcast.models.fast_path``; ``auto``: on CUDA only); it changes speed, not the
        numbers or the weights, and is not part of the checkpoint's model arguments. Default ``eager``
        until bench/gpu_step.sh has measured on a GPU that compiling pays (docs/performance.md)."""
        super().__init__()
        if model in BASELINES:
            raise ValueError(f"{model!r} is a baseline: nothing to train")
        check_probability_matching(probability_matching)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
        if loss == "quantile" and not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie strictly between 0 and 1, got {quantile}")
        if sampling not in ("scheduled", "reverse", "none"):
            raise ValueError(f"sampling must be 'scheduled', 'reverse' or 'none', got {sampling!r}")
        needed = model_class(model).min_input_steps
        if t_in < needed:
            raise ValueError(f"{model} needs at least {needed} input frames (data.t_in), got {t_in}")
        self.save_hyperparameters()
        self.net = set_fast_path(get_model(model, **self._net_kwargs()), check_fast_path(fast_path))
        if init_weights:
            self._load_net_weights(init_weights)
        self.normalizer = RainNormalizer()
        self.step_minutes: float | None = None
        self.data_info: dict[str, Any] = {}
        self._counts: Tensor | None = None

    def _load_net_weights(self, path: str) -> None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        source = checkpoint.get("nowcast", {}).get("model")
        # a network that can start from another architecture's weights says how (its load_initial_state)
        adopt = getattr(self.net, "load_initial_state", None)
        if source != self.hparams.model and not callable(adopt):
            raise CheckpointMismatch(f"init_weights {path} holds {source!r}, this run trains {self.hparams.model!r}")
        state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        if callable(adopt):
            try:
                adopt(state, source)
            except ValueError as exc:
                raise CheckpointMismatch(f"init_weights {path}: {exc}") from exc
        else:
            self.net.load_state_dict(state)

    # -- data-derived settings, saved in the checkpoint ---------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "describe"):
            self.normalizer = datamodule.normalizer
            info = datamodule.describe()
            self.step_minutes = info["step_minutes"]
            self.data_info = info
        if getattr(self.net, "motion", False):  # a hybrid runs its baseline in mm/h at inference
            self.net.normalization = self.normalizer.to_dict()
        placed = getattr(self.net, "normalizer", None)  # a network whose thresholds live in model space
        if isinstance(placed, RainNormalizer) and placed != self.normalizer:
            raise ValueError(f"{self.hparams.model} places its thresholds with the normalisation {placed.to_dict()}, "
                             f"the data use {self.normalizer.to_dict()}: give it as model.model_kwargs.normalization")
        self.check_extrapolation(datamodule)

    def check_extrapolation(self, datamodule: Any) -> None:
        """A hybrid must train on the cache of the baseline it corrects (called before any is built)."""
        if not getattr(self.net, "motion", False):
            return
        cached = getattr(getattr(datamodule, "hparams", None), "extrapolation", self.net.baseline)
        if cached != self.net.baseline:
            raise ValueError(f"{self.hparams.model} corrects {self.net.baseline!r} forecasts, but "
                             f"data.extrapolation gives it {cached!r}: set data.extrapolation: {self.net.baseline}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nowcast"] = {
            "model": self.hparams.model,
            "model_kwargs": self._model_kwargs(),
            "t_in": self.hparams.t_in,
            "t_out": self.hparams.t_out,
            "step_minutes": self.step_minutes,
            "normalization": self.normalizer.to_dict(),
            "data": self.data_info,
            # what a forecast must read beside the target: products, alignment, regrid, normalisation
            "auxiliary": list(self.data_info.get("auxiliary", [])),
            "probability_matching": self.hparams.probability_matching,
            "version": __version__,
        }

    def _difference_from(self, info: dict[str, Any]) -> str | None:
        """What differs between this run's config and a checkpoint it is asked to resume from."""
        if not info:
            return None
        saved_kwargs = {k: v for k, v in (info.get("model_kwargs") or {}).items() if k != "normalization"}
        mine = {k: v for k, v in self._net_kwargs().items() if k != "normalization"}
        norm = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
        pairs = [("model", info.get("model"), self.hparams.model),
                 ("model_kwargs", norm(saved_kwargs), norm(mine)),
                 ("t_in", info.get("t_in"), self.hparams.t_in), ("t_out", info.get("t_out"), self.hparams.t_out)]
        if self.data_info and info.get("data"):
            pairs.append(("data.products", info["data"].get("products"), self.data_info.get("products")))
            pairs.append(("data.auxiliary", info["data"].get("auxiliary", []), self.data_info.get("auxiliary", [])))
        for key, saved, wanted in pairs:
            if saved != wanted:
                return f"{key}: the checkpoint has {saved!r}, the config asks for {wanted!r}"
        return None

    def _net_kwargs(self) -> dict[str, Any]:
        """The network's arguments: the config's, plus the channels when auxiliary inputs feed it."""
        kwargs = dict(self.hparams.model_kwargs or {})
        if self.hparams.input_channels != 1:
            kwargs.update(in_channels=self.hparams.input_channels, out_channels=1)
        return kwargs

    def _model_kwargs(self) -> dict[str, Any]:
        kwargs = self._net_kwargs()
        if getattr(self.net, "motion", False):
            kwargs["normalization"] = self.normalizer.to_dict()
        return kwargs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("nowcast", {})
        difference = self._difference_from(info)
        if difference:
            raise CheckpointMismatch(difference)
        if "normalization" in info:
            self.normalizer = RainNormalizer.from_dict(info["normalization"])
        self.step_minutes = info.get("step_minutes")
        self.data_info = info.get("data", {})

    # -- sampling schedules --------------------------------------------------------------------
    def sampling_probabilities(self) -> dict[str, float]:
        """Probability of feeding true frames: inputs (reverse sampling) and forecast steps."""
        step = self.global_step
        stop = max(1, self.hparams.sampling_stop_steps)
        if self.hparams.sampling == "none":
            return {"input_truth_prob": 1.0, "target_truth_prob": 0.0}
        if self.hparams.sampling == "reverse":  # PredRNN-V2: 0.5 -> 1 on inputs, 0.5 -> 0 on targets
            return {
                "input_truth_prob": 1.0 - 0.5 * math.exp(-step / self.hparams.reverse_sampling_alpha),
                "target_truth_prob": max(0.0, 0.5 * (1.0 - step / stop)),
            }
        return {"input_truth_prob": 1.0, "target_truth_prob": max(0.0, 1.0 - step / stop)}

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, inputs: Tensor, t_out: int | None = None) -> Tensor:
        return self.net(inputs, t_out or self.hparams.t_out)

    @staticmethod
    def _conditioning(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The cached extrapolation for hybrids (without it they compute their own, slowly)."""
        return {"extrapolation": batch["extrapolation"]} if "extrapolation" in batch else {}

    def _loss(self, prediction: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if self.hparams.loss == "quantile":
            loss = pinball(prediction, batch["targets"], batch["target_mask"], self.hparams.quantile)
        else:
            weights = None
            if self.hparams.loss == "balanced":
                weights = balance_weights(self.normalizer.inverse(batch["targets"]))
            loss = mse_mae(prediction, batch["targets"], batch["target_mask"], weights)
        if self.hparams.csi_weight > 0:
            for threshold in self.hparams.csi_thresholds:
                z = float(self.normalizer.forward(torch.tensor(float(threshold))))
                loss = loss + self.hparams.csi_weight * soft_csi(
                    prediction, batch["targets"], batch["target_mask"], z, self.hparams.csi_temperature)
        if self.hparams.teacher_weight > 0 and "teacher" in batch:
            loss = loss + self.hparams.teacher_weight * mse_mae(
                prediction, batch["teacher"], batch["teacher_mask"] & batch["target_mask"])
        elif self.hparams.teacher_weight > 0 and self.training:
            raise ValueError("model.teacher_weight needs a teacher's forecasts: set data.teacher (e.g. sprog)")
        return loss

    def _own_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """(loss, deterministic forecast) of a network that trains with its own loss (a probabilistic
        head: ``loss_and_forecast``, e.g. nowcast/models/exceedance.py), else None."""
        own = getattr(self.net, "loss_and_forecast", None)
        if not callable(own):
            return None
        return own(batch["inputs"], batch["targets"], batch["target_mask"], self.hparams.t_out,
                   **self._conditioning(batch))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        own = self._own_loss(batch)
        if own is not None:
            self.log("train/loss", own[0], prog_bar=True, batch_size=batch["inputs"].shape[0])
            return own[0]
        probabilities = self.sampling_probabilities() if self.training else {}
        prediction = self.net(batch["inputs"], self.hparams.t_out, targets=batch["targets"], **probabilities,
                              **self._conditioning(batch))
        loss = self._loss(prediction, batch)
        decouple = getattr(self.net, "decouple_loss", None)
        if decouple is not None and self.hparams.decouple_weight > 0:
            loss = loss + self.hparams.decouple_weight * decouple
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["inputs"].shape[0])
        for name, value in probabilities.items():
            self.log(f"train/{name}", value, batch_size=batch["inputs"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        # per lead: abs-error sum, valid count, then hits, misses, false alarms per threshold
        self._counts = torch.zeros(self.hparams.t_out, 2 + 3 * len(VALIDATION_THRESHOLDS), device=self.device)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        own = self._own_loss(batch)
        if own is None:
            prediction = self.net(batch["inputs"], self.hparams.t_out, **self._conditioning(batch))
            loss = self._loss(prediction, batch)
        else:
            loss, prediction = own
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["inputs"].shape[0])
        forecast = self.normalizer.inverse(prediction.float())
        observed = self.normalizer.inverse(batch["targets"].float())
        mask = batch["target_mask"]
        dims = (0, 2, 3, 4)
        rows = [((forecast - observed).abs() * mask).sum(dims), mask.sum(dims).to(forecast.dtype)]
        for threshold in VALIDATION_THRESHOLDS:
            rows += contingency((forecast >= threshold).float(), (observed >= threshold).float(), mask.float(), dims)
        self._counts += torch.stack([r.to(self._counts.dtype) for r in rows], dim=1)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._counts, reduce_op="sum")
        step = self.step_minutes or 1.0
        per_lead: dict[float, list[Tensor]] = {threshold: [] for threshold in VALIDATION_THRESHOLDS}
        for lead in range(self.hparams.t_out):
            tag = f"lead_{int(round((lead + 1) * step)):03d}min"
            row = counts[lead]
            self.log(f"val/mae_mm_h/{tag}", row[0] / row[1].clamp(min=1.0))
            for k, threshold in enumerate(VALIDATION_THRESHOLDS):
                per_lead[threshold].append(csi(*row[2 + 3 * k : 5 + 3 * k]))
                self.log(f"val/csi_{threshold:g}mm/{tag}", per_lead[threshold][-1])
        # one number for the whole horizon: a checkpoint chosen on it cannot trade the second half
        # hour for the first (a network that collapses after 30 min scores low here)
        for threshold, scores in per_lead.items():
            self.log(f"val/csi_{threshold:g}mm/mean", torch.stack(scores).mean())
        # one number for light and heavy rain at each lead (the CSI averaged over the thresholds): a
        # checkpoint chosen on it cannot buy CSI at 1 mm/h by giving up the cores (val/csi_1_5mm/...)
        joined = "_".join(f"{threshold:g}" for threshold in VALIDATION_THRESHOLDS)
        for lead in range(self.hparams.t_out):
            tag = f"lead_{int(round((lead + 1) * step)):03d}min"
            both = torch.stack([per_lead[threshold][lead] for threshold in VALIDATION_THRESHOLDS])
            self.log(f"val/csi_{joined}mm/{tag}", both.mean())
