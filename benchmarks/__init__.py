"""Benchmarks (not tests): `python -m benchmarks` prints markdown tables for docs/performance.md."""
