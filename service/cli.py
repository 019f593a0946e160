"""``nowcast serve``: the HTTP service (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="Service YAML (see configs/service.yaml).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve forecasts over HTTP (FastAPI + uvicorn)."""
    from service.app import create_app
    from service.server import run
    from service.settings import load_settings

    settings = load_settings(config)
    run(create_app(settings), settings, host, port)
