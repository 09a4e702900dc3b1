"""Benchmarks: `make bench` (full, writes docs/benchmarks.md) and `make bench-quick` (seconds-long smoke run).

See bench/run.py for what is measured and docs/benchmarks.md for the figures.
"""
