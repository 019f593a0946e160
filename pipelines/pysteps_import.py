"""pysteps without its chatter: the one place that silences the banner pysteps prints on import.

pysteps prints a banner ("Pysteps configuration file found at: ...") when first imported, and
some of its methods print progress. Every pysteps import in ``pipelines`` and ``nowcast`` goes
through ``quiet_import``; ``quiet()`` silences a single noisy call. This module is in the lowest
layer (``pipelines``) so that ``nowcast`` can use it too; it imports nothing from the project.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Discard what pysteps prints to stdout inside the block (warnings and errors still show)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def quiet_import(module: str) -> ModuleType:
    """``importlib.import_module(module)`` with pysteps' import banner discarded."""
    with quiet():
        return importlib.import_module(module)
