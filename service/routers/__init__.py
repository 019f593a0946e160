"""HTTP routes: health (open), models and forecasts (API key when configured)."""
