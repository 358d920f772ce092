"""The process: app factory and lifespan, uvicorn serving, workers, settings, logs and metrics."""
