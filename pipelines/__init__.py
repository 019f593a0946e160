"""Radar and satellite frames into a Zarr archive, and training windows out of it."""
