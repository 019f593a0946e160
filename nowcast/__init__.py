"""Precipitation nowcasting: models, training, verification and the command line."""

__version__ = "0.1.0"
