"""``python -m nowcast_cli``."""

from nowcast_cli.main import app

app(prog_name="nowcast")
