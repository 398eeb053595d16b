"""Benchmarks of bts-sync against the naive re-send design; run them with ``python -m bench.NAME``."""
