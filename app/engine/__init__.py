"""The engine: generation service, micro-batcher, model registry, forward passes and imaging. Knows no HTTP."""
