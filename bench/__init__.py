"""Benchmark harness: ``python -m bench.run`` (see bench/run.py). Nothing in app/ imports this."""
