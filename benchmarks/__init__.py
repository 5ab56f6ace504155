"""Benchmarks (not tests): `python -m benchmarks` prints markdown tables for the README."""
