"""LightningDataModule over one or more products of an archive."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from pipelines.channels import AuxiliarySpec, align_latest
from pipelines.dataset import MonthSplit, SequenceDataset, TimeBlockSplit
from pipelines.normalization import RainNormalizer

#: the splits whose windows a Lightning stage reads (their cached baselines are computed for it)
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class _EpochAwareConcat(ConcatDataset):
    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


class RadarDataModule(pl.LightningDataModule):
    """Train/val/test windows from ``products`` (several products feed one training set).

    The split is by time blocks (``block_hours``, ``split_pattern``), or by calendar months
    (``split_months``: ``{val: [2016-07], test: [2016-09]}``, the other months train); training windows are
    randomly cropped (``crop``, ``min_rain_fraction``) and flipped/rotated, evaluation
    windows are untouched, cropped to ``val_crop`` (default: ``crop``) and thinned to every
    ``val_stride``-th window. Validation crops larger than the training crops are the point: a
    small crop loses advected rain at its edges, which penalises the forecasters that move rain
    (``bench/validation_baselines.py`` scores any forecaster on a config's validation windows).

    ``auxiliary`` names products read as extra input channels (``pipelines.channels``): each entry
    a product name, or a mapping with ``product`` and any of ``tolerance_minutes`` (default 15),
    ``method`` (``bilinear``/``nearest``) and ``normalization`` (a RainNormalizer dict; default:
    the target's). They are regridded onto each target product's grid and aligned in time.

    ``min_window_rain`` keeps only the windows whose last input frame rains (at least
    ``window_rain_threshold`` mm/h) over at least that share of its observed pixels, in every split:
    a long archive is mostly dry, and dry windows teach a network nothing but persistence of zero.

    ``advect_prob`` replaces that share of the training windows by a real frame carried at a random
    constant speed (``SequenceDataset._advected_codes``): exact, varied motion for plain networks.

    ``motion`` gives each window the cached forecast a hybrid corrects; ``extrapolation`` names the
    baseline that made it (``pipelines.extrapolation.METHODS``: ``optical_flow`` or ``sprog``) and
    must be the one the model was built to correct.

    ``teacher`` (a baseline of ``pipelines.extrapolation.METHODS``) gives each training window that
    baseline's cached forecast to learn from beside the observations (``model.teacher_weight``):
    distillation, for networks that read only frames.
    """

    def __init__(
        self,
        store: str = "data/demo.zarr",
        products: list[str] | None = None,
        t_in: int = 6,
        t_out: int = 6,
        crop: int | None = 128,
        min_rain_fraction: float = 0.05,
        batch_size: int = 8,
        num_workers: int = 0,
        block_hours: float = 24.0,
        split_pattern: list[str] | None = None,
        normalization: str = "log",
        augment: bool = True,
        seed: int = 0,
        holdout_hours: float = 0.0,
        motion: bool = False,
        extrapolation: str = "optical_flow",
        auxiliary: list[str | dict[str, Any]] | None = None,
        val_crop: int | None = None,
        val_stride: int = 1,
        advect_prob: float = 0.0,
        advect_max_speed: int = 5,
        teacher: str | None = None,
        split_months: dict[str, list[str]] | None = None,
        min_window_rain: float = 0.0,
        window_rain_threshold: float = 1.0,
    ):
        super().__init__()
        from pipelines.extrapolation import METHODS

        if extrapolation not in METHODS:
            raise ValueError(f"data.extrapolation must be one of {', '.join(METHODS)}, got {extrapolation!r}")
        if teacher is not None and teacher not in METHODS:
            raise ValueError(f"data.teacher must be one of {', '.join(METHODS)}, got {teacher!r}")
        self.save_hyperparameters()
        self.products = products or ["fmi"]
        self.splitter: TimeBlockSplit | MonthSplit = (
            MonthSplit.parse(split_months) if split_months else
            TimeBlockSplit(block_hours, tuple(split_pattern) if split_pattern else TimeBlockSplit().pattern)
        )
        self.normalizer = RainNormalizer(kind=normalization)
        # an auxiliary product is normalised like the target unless its entry says otherwise
        self.auxiliary = [
            AuxiliarySpec.parse({"normalization": self.normalizer.to_dict(),
                                 **({"product": item} if isinstance(item, str) else item)})
            for item in auxiliary or []
        ]
        self.datasets: dict[str, Dataset] = {}

    def _until(self, product: str):
        if not self.hparams.holdout_hours:
            return None
        from pipelines.store import ProductArchive

        last = ProductArchive(self.hparams.store, product).times()[-1]
        return last - np.timedelta64(int(self.hparams.holdout_hours * 3600), "s") + np.timedelta64(1, "s")

    def _extrapolation(self, product: str) -> str | None:
        """Where the hybrid's cached baseline lives (filled by ``_fill_caches`` for the windows read)."""
        if not self.hparams.motion:
            return None
        from pipelines.extrapolation import cache_path

        return cache_path(self.hparams.store, self.hparams.extrapolation)

    def _teacher(self, product: str, split: str) -> str | None:
        """The teacher's cache, for training windows only (validation scores the observations)."""
        if self.hparams.teacher is None or split != "train":
            return None
        from pipelines.extrapolation import cache_path

        return cache_path(self.hparams.store, self.hparams.teacher)

    def _fill_caches(self, splits: tuple[str, ...]) -> None:
        """Compute the cached baselines of exactly the init times these splits' windows read: a long
        archive is mostly dry, and a run that trains reads neither its dry windows nor its test months."""
        from pipelines.extrapolation import build_cache

        h = self.hparams
        for split in splits:
            for ds in self.datasets[split].datasets:
                inits = ds.starts + h.t_in - 1
                for path, method in ((ds.extrapolation, h.extrapolation), (ds.teacher, h.teacher)):
                    if path:
                        build_cache(h.store, ds.product, h.t_out, workers=max(1, h.num_workers), path=path,
                                    method=method, inits=inits)

    def _build(self, split: str) -> Dataset:
        evaluation = split != "train"
        crop = self.hparams.val_crop if evaluation and self.hparams.val_crop else self.hparams.crop
        parts = [
            SequenceDataset(
                self.hparams.store, product, self.hparams.t_in, self.hparams.t_out, split=split,
                splitter=self.splitter, crop=crop, stride=self.hparams.val_stride if evaluation else 1,
                min_rain_fraction=self.hparams.min_rain_fraction,  # val: rainy crops too, fixed per window
                augment=self.hparams.augment and split == "train", normalizer=self.normalizer,
                seed=self.hparams.seed, until=self._until(product), extrapolation=self._extrapolation(product),
                auxiliary=self.auxiliary, advect_prob=self.hparams.advect_prob if split == "train" else 0.0,
                advect_max_speed=self.hparams.advect_max_speed, teacher=self._teacher(product, split),
                min_window_rain=self.hparams.min_window_rain, window_rain_threshold=self.hparams.window_rain_threshold,
            )
            for product in self.products
        ]
        return _EpochAwareConcat(parts)

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = self._build(split)
        if fresh:
            self._check_splits()
        self._fill_caches(STAGE_SPLITS.get(stage or "", ("train", "val", "test")))

    def _check_splits(self) -> None:
        """Say how many windows each split got; an empty training split is a config error, named."""
        from pytorch_lightning.utilities import rank_zero_info

        steps = {ds.product: ds.step_minutes for ds in self.datasets["train"].datasets}
        if len(set(steps.values())) > 1:
            listed = ", ".join(f"{p} every {m:g} min" for p, m in steps.items())
            raise ValueError(f"products at different time steps cannot share one training set ({listed}); "
                             "train on products of one step")
        counts = {split: len(ds) for split, ds in self.datasets.items()}
        h = self.hparams
        split_text = (f"months {self.splitter.to_dict()}, other months {self.splitter.default}"
                      if isinstance(self.splitter, MonthSplit) else
                      f"blocks of {h.block_hours:g} h, pattern {list(self.splitter.pattern)}")
        rank_zero_info(f"windows per split: train {counts['train']}, val {counts['val']}, test {counts['test']} "
                       f"({h.t_in}+{h.t_out} frames each, {split_text}, products {self.products})")
        if counts["train"] == 0:  # the advice is computed from each product: frames, step, runs, blocks
            from pipelines.store import ProductArchive
            from pipelines.window_advice import no_windows_advice

            raise ValueError("no training windows. " + " ".join(
                no_windows_advice(p, ProductArchive(h.store, p).times(), h.t_in, h.t_out, self.splitter,
                                  holdout_hours=h.holdout_hours) + "." for p in self.products))
        self._report_auxiliary(h.products[0] if h.products else "the target")
        if counts["val"] == 0:
            rank_zero_info("no validation windows: nothing will be validated (add 'val' to data.split_pattern)")
        elif counts["val"] > counts["train"]:
            rank_zero_info(f"more validation ({counts['val']}) than training ({counts['train']}) windows: "
                           "check data.block_hours and data.split_pattern")

    def describe(self) -> dict:
        """What a checkpoint should remember about its training data."""
        from pipelines.store import ProductArchive

        self.setup("fit")
        first = self.datasets["train"].datasets[0]
        ranges = {}
        for product in self.products:
            times = ProductArchive(self.hparams.store, product).times()
            ranges[product] = [str(times[0]) + "Z", str(times[-1]) + "Z"] if len(times) else None
        return {
            "store": self.hparams.store,
            "products": list(self.products),
            "time_ranges": ranges,
            "step_minutes": first.step_minutes,
            "split": ({"months": self.splitter.to_dict(), "other_months": self.splitter.default}
                      if isinstance(self.splitter, MonthSplit) else
                      {"block_hours": self.splitter.block_hours, "pattern": list(self.splitter.pattern)}),
            "holdout_hours": self.hparams.holdout_hours,
            "windows": {split: len(ds) for split, ds in self.datasets.items()},
            "auxiliary": [spec.to_dict() for spec in self.auxiliary],
            "extrapolation": self.hparams.extrapolation if self.hparams.motion else None,
            "teacher": self.hparams.teacher,
            "auxiliary_missing": self._auxiliary_missing(),
        }

    def _report_auxiliary(self, target: str) -> None:
        """Say how often each auxiliary product lacks a frame; loudly when it mostly does (a model
        then learns to ignore it: usually the two products do not overlap in time)."""
        from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

        for product, row in self._auxiliary_missing().items():
            share = row["missing"] / max(1, row["input_frames"])
            text = (f"auxiliary {product!r}: {row['missing']} of {row['input_frames']} training input frames have no "
                    f"frame within its tolerance ({share:.0%}; zeros with mask 0 stand in)")
            if share > 0.5:
                rank_zero_warn(f"{text}; check their overlap: nowcast store info --product {target} "
                               f"--overlap {product}")
            else:
                rank_zero_info(text)

    def _auxiliary_missing(self) -> dict[str, dict[str, int]]:
        """Per auxiliary product: training input frames with no frame of it within its tolerance."""
        missing: dict[str, dict[str, int]] = {}
        for dataset in self.datasets["train"].datasets:
            frames = (dataset.starts[:, None] + np.arange(dataset.t_in)[None]).ravel()
            times = dataset.seconds[frames].astype("datetime64[s]")
            for reader in dataset.readers:
                lost = int((align_latest(times, reader.times, reader.spec.tolerance_minutes) < 0).sum())
                row = missing.setdefault(reader.spec.product, {"missing": 0, "input_frames": 0})
                row["missing"] += lost
                row["input_frames"] += len(times)
        return missing

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
            num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
            drop_last=shuffle and len(self.datasets[split]) > self.hparams.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
