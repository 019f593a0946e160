"""``nowcast train``: LightningCLI over NowcastModule and RadarDataModule (YAML configs)."""

from __future__ import annotations

import warnings

from pytorch_lightning.cli import LightningCLI

from nowcast.training import NowcastModule
from pipelines.datamodule import RadarDataModule


class NowcastCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # one source of truth for the window: the data section
        parser.link_arguments("data.t_in", "model.t_in")
        parser.link_arguments("data.t_out", "model.t_out")

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
