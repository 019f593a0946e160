"""``nowcast train``: LightningCLI over NowcastModule and RadarDataModule (YAML configs)."""

from __future__ import annotations

import warnings

from pytorch_lightning.cli import LightningCLI, LRSchedulerTypeTuple
from torch.optim import Optimizer

from nowcast.checkpoint_io import CheckpointJanitor
from nowcast.training import NowcastModule
from pipelines.channels import input_channels
from pipelines.datamodule import RadarDataModule

#: the optimiser when a config names none: the one place it is set (the module has no lr of its own)
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 1e-4}}


class NowcastCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # one source of truth for the window: the data section
        parser.link_arguments("data.t_in", "model.t_in")
        parser.link_arguments("data.t_out", "model.t_out")
        # and for the channels: the target plus two per auxiliary product (pipelines.channels)
        parser.link_arguments("data.auxiliary", "model.input_channels", compute_fn=input_channels)
        # and for the optimiser: the config's optimizer section, AdamW by default
        parser.add_optimizer_args((Optimizer,))
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        parser.set_defaults({"optimizer": DEFAULT_OPTIMIZER})

    def before_fit(self) -> None:
        # before the datamodule builds an extrapolation cache that the model would refuse
        self.model.check_extrapolation(self.datamodule)
        # kills during checkpoint saves leave no partial or untracked copies (cleaned at start)
        if not any(isinstance(cb, CheckpointJanitor) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(CheckpointJanitor())

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        # parse errors end in "run: <prog> --help": name the command that lists every key
        for subparser in self._subcommand_parsers.values():
            subparser.prog = "nowcast train"


def run_training(args: list[str]) -> NowcastCLI:
    # The arguments travel in ``args``; sys.argv must stay as it is because DDP starts the other
    # ranks by re-running this very command line. LightningCLI's warning about both is moot.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return NowcastCLI(
        NowcastModule, RadarDataModule, args=args, seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )
