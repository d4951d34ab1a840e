"""Benchmarks: run one with ``python -m bench.NAME`` (see bench/README.md)."""
