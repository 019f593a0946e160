"""A callback for training tests: records which windows each rank trained on."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class RecordTrainingWindows(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.txt", "a") as f:
            for init_time in batch["init_time"].tolist():
                f.write(f"{trainer.current_epoch} {init_time}\n")


class RecordValidation(pl.Callback):
    """Each rank's own validation counts (before the cross-rank reduction) and the CSI it logged."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._own = pl_module._counts.tolist()  # callbacks run before the module's hook reduces them

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json

        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"counts": self._own,
                  "csi_1mm_first_lead": float(trainer.callback_metrics["val/csi_1mm/lead_005min"])}
        with open(self.out_dir / f"val_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
