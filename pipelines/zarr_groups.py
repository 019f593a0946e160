"""Open-or-create a Zarr group when other processes may be creating it at the same moment.

Why: zarr's ``mode="a"`` checks whether a group exists, then writes its ``zarr.json``. Two
processes between that check and that write both try to create it, and the later one fails
with ``ContainsGroupError`` although the group it wanted is now there. Two ingests started
together into a fresh store hit exactly this; retrying finds the group and opens it.
"""

from __future__ import annotations

import time
from typing import Any

import zarr

ATTEMPTS = 20


def require_group(zstore: Any, path: str = "") -> zarr.Group:
    """The group at ``path`` in ``zstore`` (root when empty), created with its parents if missing."""
    for attempt in range(ATTEMPTS):
        try:
            root = zarr.open_group(zstore, mode="a", zarr_format=3, use_consolidated=False)
            return root.require_group(path) if path else root
        except zarr.errors.ContainsGroupError:
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.005 * (attempt + 1))  # the creator's zarr.json is being written: look again
    raise AssertionError("unreachable")
