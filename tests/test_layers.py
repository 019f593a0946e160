"""The layers stack one way: pipelines -> nowcast -> service, and only the entry module sees all three."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: what each package may import from this project (itself included)
ALLOWED = {
    "pipelines": {"pipelines"},
    "nowcast": {"pipelines", "nowcast"},
    "service": {"pipelines", "nowcast", "service"},
}
PROJECT = {"pipelines", "nowcast", "service", "nowcast_cli"}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_layer_imports_one_above_it(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(project_imports(path) - ALLOWED[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_entry_module_composes_every_layer_command_line() -> None:
    import typer.main

    from nowcast_cli.main import app

    program = typer.main.get_command(app)
    assert set(program.commands) == {"ingest", "store", "train", "promote", "evaluate", "backfill", "verify", "demo",
                                     "serve"}
    assert set(program.commands["store"].commands) == {"info", "show", "check"}


def test_the_image_holds_every_package_the_command_imports() -> None:
    """The Dockerfile copies packages one by one: a new one missing there breaks only the image."""
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == PROJECT and packages <= copied
