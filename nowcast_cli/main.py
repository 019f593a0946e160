"""``nowcast``: the archive's commands (``pipelines.cli``), the models' (``nowcast.cli``) and the
service's (``service.cli``) under one program. Each layer owns its commands; only this module
sees all three, so no layer imports one above it."""

from __future__ import annotations

import typer

from nowcast import cli as model_commands
from pipelines import cli as archive_commands
from service import cli as service_commands

app = typer.Typer(help="Precipitation nowcasting from radar and satellite archives.", no_args_is_help=True)
for layer in (archive_commands, model_commands, service_commands):
    app.add_typer(layer.app)  # no name: the layer's commands sit at the top, as `nowcast ingest`

if __name__ == "__main__":
    app()
