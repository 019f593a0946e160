"""The ``nowcast`` command: one entry above the three layers, each of which owns its commands."""
