"""The forecast HTTP service (FastAPI); arrives with the models."""
