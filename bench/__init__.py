"""Benchmarks and soak scripts: run with `python -m bench.<name>`; not part of the tests."""
